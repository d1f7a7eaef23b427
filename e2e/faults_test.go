package e2e

import (
	"context"
	"encoding/json"
	"os"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"google.golang.org/grpc/status"
)

// Bounds the checker holds each fault to.
const (
	recoveryBound = 30 * time.Second // fault end to progress on every name
	ghostGrace    = 5 * time.Second  // a waiter key may outlive its client by this much after the fault
	lockers       = 16
	campaigners   = 4
)

// faultEnv is what a fault acts on.
type faultEnv struct {
	c       *cluster
	proxies []*proxyProc
	w       *workload
	extra   map[string]any // fault-specific figures for the report
}

type fault struct {
	name string
	// inject makes the fault and undoes it; it returns when the fault ended.
	inject func(t *testing.T, e *faultEnv) time.Time
}

// faultReport is one row of docs/reliability.md.
type faultReport struct {
	Fault           string         `json:"fault"`
	Acquisitions    int64          `json:"acquisitions"`
	FencedAccepted  int64          `json:"fenced_accepted"`
	FencedRejected  int64          `json:"fenced_rejected"`
	FencedUnknown   int64          `json:"fenced_unknown"`
	ElectionRecords int64          `json:"election_records"`
	Locks           recordCheck    `json:"locks"`
	Election        recordCheck    `json:"election"`
	GhostKeys       int            `json:"ghost_keys"`
	KeysLeft        int            `json:"keys_left"`
	RecoverySeconds float64        `json:"recovery_seconds"`
	ClientOverrunMS float64        `json:"client_overrun_ms"`
	ProxyOverruns   int            `json:"proxy_overruns"`
	Errors          map[string]int `json:"errors"`
	Extra           map[string]any `json:"extra,omitempty"`
}

var lockNames = []string{"lock-a", "lock-b", "lock-c"}

const electionName = "election"

var faults = []fault{
	{"etcd leader killed and restarted", func(t *testing.T, e *faultEnv) time.Time {
		l := mustLeader(t, e.c)
		e.c.kill(l)
		e.c.waitNewLeader(l, time.Minute)
		time.Sleep(2 * time.Second)
		e.c.restart(l)
		e.c.waitLeader(time.Minute)
		return time.Now()
	}},
	{"etcd follower killed and restarted", func(t *testing.T, e *faultEnv) time.Time {
		l := mustLeader(t, e.c)
		var f *member
		for _, m := range e.c.members {
			if m != l {
				f = m
			}
		}
		e.c.kill(f)
		time.Sleep(3 * time.Second)
		e.c.restart(f)
		e.c.waitLeader(time.Minute)
		return time.Now()
	}},
	{"etcd leader partitioned from the others", func(t *testing.T, e *faultEnv) time.Time {
		l := mustLeader(t, e.c)
		// Peer traffic only: the proxies can still reach the old leader,
		// which must not serve them stale answers.
		e.c.partition(l)
		e.c.waitNewLeader(l, time.Minute)
		time.Sleep(3 * time.Second)
		e.c.heal()
		e.c.waitLeader(time.Minute)
		return time.Now()
	}},
	{"all etcd members down then back", func(t *testing.T, e *faultEnv) time.Time {
		for _, m := range e.c.members {
			e.c.kill(m)
		}
		time.Sleep(3 * time.Second)
		for _, m := range e.c.members {
			e.c.restart(m)
		}
		e.c.waitLeader(time.Minute)
		return time.Now()
	}},
	{"one coordproxy killed while clients wait and hold", func(t *testing.T, e *faultEnv) time.Time {
		waitFor(t, 30*time.Second, "clients waiting", func() bool { return len(e.w.waitingWorkers(0)) > 0 })
		e.proxies[0].kill()
		time.Sleep(3 * time.Second)
		e.proxies[0].start()
		return time.Now()
	}},
	{"clients disconnect mid-wait", clientsDisconnect},
	{"holder's lease expires while it holds", holderLeaseExpires},
	{"waiter's lease expires while it waits", waiterLeaseExpires},
}

// clientsDisconnect closes the connections of clients waiting at least two
// places from the head of a queue. Their waiter keys must go within the
// grace. A lock granted at the instant its client vanishes is held, not
// waited for, and no proxy can tell that the answer was never read: a victim
// found at the head of its queue right after it went is counted as a holder,
// whose key lives until its lease expires.
func clientsDisconnect(t *testing.T, e *faultEnv) time.Time {
	w := e.w
	var gone, held int
	deadline := time.Now().Add(30 * time.Second)
	for gone < 4 && time.Now().Before(deadline) {
		for _, wk := range w.waitingWorkers(2) {
			if gone == 4 {
				break
			}
			name, ok := wk.waitingFor()
			if !ok {
				continue
			}
			key, ahead := w.place(wk, name)
			if ahead < 2 || !wk.disconnectIfWaiting(name) {
				continue
			}
			gone++
			_, after := w.place(wk, name)
			t.Logf("victim %d disconnected waiting for %s with %s, %d ahead before, %d after", wk.id, name, key, ahead, after)
			if after == 0 {
				held++
				wk.mu.Lock()
				wk.ended[name] = time.Now().Add(leaseTTL * time.Second)
				wk.mu.Unlock()
				t.Logf("victim %d was granted %s as it went: a holder until its lease expires", wk.id, key)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if gone == 0 {
		t.Fatal("no client was waiting to disconnect")
	}
	e.extra["clients_disconnected"] = gone
	e.extra["granted_as_they_went"] = held
	return time.Now()
}

func mustLeader(t *testing.T, c *cluster) *member {
	t.Helper()
	l, err := c.leader()
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func waitFor(t *testing.T, bound time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: no %s", bound, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// holderLeaseExpires: a holder stops keeping its lease alive inside its
// critical section. It must lose the lock, the next waiter must win, and its
// late fenced write must be rejected.
func holderLeaseExpires(t *testing.T, e *faultEnv) time.Time {
	w := e.w
	victim := w.newWorker(3)
	name := w.names[0]
	key, ok := victim.lock(name)
	if !ok {
		t.Fatal("victim never got the lock")
	}
	g, err := w.kv.Get(context.Background(), key)
	if err != nil || len(g.Kvs) == 0 {
		t.Fatalf("victim's key: %v %v", g, err)
	}
	rev := g.Kvs[0].CreateRevision
	if ok, err := w.fenced("rec/", name, victim.id, key, rev, "enter"); !ok {
		t.Fatalf("victim's first fenced write refused: %v", err)
	}
	victim.stopKeepAlive()
	expired := waitLeaseGone(t, w.kv, victim.lease)
	waitFor(t, recoveryBound, "new holder after the victim's lease expired", func() bool { return w.lastProgress(name).After(expired) })
	e.extra["next_holder_after_expiry_seconds"] = w.lastProgress(name).Sub(expired).Seconds()
	ok, err = w.fenced("rec/", name, victim.id, key, rev, "exit")
	if ok || err != nil {
		t.Fatalf("victim's late fenced write: accepted=%v err=%v; want rejected", ok, err)
	}
	victim.unlock(key)
	victim.setInterest("", false)
	e.extra["late_write_rejected"] = true
	return time.Now()
}

// waiterLeaseExpires: a waiter stops keeping its lease alive while it waits
// behind a holder that does not let go. It must be told
// "mutex: session is expired" and never get the lock; the same for a
// candidate, which must never become leader.
func waiterLeaseExpires(t *testing.T, e *faultEnv) time.Time {
	w := e.w
	blocker := w.newWorker(60)
	key, ok := blocker.lock("blocked")
	if !ok {
		t.Fatal("blocker never got the lock")
	}
	blocker.setInterest("", false)
	var lead *epb.LeaderKey
	if err := w.call("Campaign", func(ctx context.Context) (err error) {
		r, err := blocker.elec.Campaign(ctx, &epb.CampaignRequest{Name: []byte("blocked-election"), Lease: int64(blocker.lease), Value: []byte("blocker")})
		if err == nil {
			lead = r.Leader
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}

	lockVictim, campaignVictim := w.newWorker(3), w.newWorker(3)
	results := make(chan error, 2)
	long, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	go func() {
		_, err := lockVictim.locks.Lock(long, &v3lockpb.LockRequest{Name: []byte("blocked"), Lease: int64(lockVictim.lease)})
		results <- err
	}()
	go func() {
		_, err := campaignVictim.elec.Campaign(long, &epb.CampaignRequest{Name: []byte("blocked-election"), Lease: int64(campaignVictim.lease), Value: []byte("victim")})
		results <- err
	}()
	waitFor(t, 30*time.Second, "victims queued", func() bool {
		a, _ := w.kv.Get(long, "blocked/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		b, _ := w.kv.Get(long, "blocked-election/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		return a != nil && b != nil && a.Count == 2 && b.Count == 2
	})
	lockVictim.stopKeepAlive()
	campaignVictim.stopKeepAlive()
	stopped := time.Now()
	for range 2 {
		select {
		case err := <-results:
			e.extra["told_after_keepalive_stopped_seconds"] = time.Since(stopped).Seconds()
			if status.Convert(err).Message() != concurrency.ErrSessionExpired.Error() {
				t.Fatalf("victim ended with %v, want %q", err, concurrency.ErrSessionExpired)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("a victim whose lease expired is still waiting while the holder holds")
		}
	}
	// The holders never let go in the meantime: the victims were told
	// while still behind them.
	for _, pfx := range []string{"blocked/", "blocked-election/"} {
		r, err := w.kv.Get(long, pfx, clientv3.WithPrefix())
		if err != nil || len(r.Kvs) != 1 || r.Kvs[0].Lease != int64(blocker.lease) {
			t.Fatalf("keys under %s: %v %v; want the blocker's only", pfx, r, err)
		}
	}
	blocker.unlock(key)
	w.call("Resign", func(ctx context.Context) error {
		_, err := blocker.elec.Resign(ctx, &epb.ResignRequest{Leader: lead})
		return err
	})
	e.extra["victims_told_session_expired"] = 2
	return time.Now()
}

func waitLeaseGone(t *testing.T, kv *clientv3.Client, lease clientv3.LeaseID) time.Time {
	t.Helper()
	waitFor(t, 30*time.Second, "lease expiry", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		r, err := kv.TimeToLive(ctx, lease)
		return err == nil && r.TTL <= 0
	})
	return time.Now()
}

// waitProgress waits until every name has an accepted record after since
// and returns how long after since the last of them came.
func (w *workload) waitProgress(t *testing.T, since time.Time, bound time.Duration) time.Duration {
	t.Helper()
	names := append(append([]string(nil), w.names...), w.election)
	waitFor(t, bound, "progress on every name", func() bool {
		for _, n := range names {
			if !w.lastProgress(n).After(since) {
				return false
			}
		}
		return true
	})
	return time.Since(since)
}

// TestFaults runs each fault on a cluster, proxies and workload of its own,
// two at a time (the package takes about ten minutes, go test's bound for
// one test binary, and every bound the cases check holds on a loaded
// machine).
func TestFaults(t *testing.T) {
	var mu sync.Mutex
	var reports []faultReport
	t.Cleanup(func() { writeReport(t, "faults", reports) }) // after every case
	for _, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			t.Parallel()
			extra := map[string]any{}
			c := startCluster(t, 3)
			ps := startProxies(t, c, 2)
			w := newWorkload(t, c, ps, lockNames, electionName)
			w.start(lockers, campaigners)
			w.waitProgress(t, time.Time{}, time.Minute)
			time.Sleep(2 * time.Second)

			end := f.inject(t, &faultEnv{c: c, proxies: ps, w: w, extra: extra})
			w.mark(end)
			names := append(append([]string(nil), w.names...), w.election)
			time.Sleep(time.Until(end.Add(ghostGrace)))
			ghosts := w.ghosts(t, names, ghostGrace)
			for _, g := range ghosts {
				t.Errorf("ghost waiter %s %s after the fault", g, ghostGrace)
			}

			var recovery time.Duration
			waitFor(t, time.Until(end.Add(recoveryBound)), "progress on every name after the fault", func() bool {
				d, ok := w.recovery(names)
				recovery = d
				return ok
			})
			time.Sleep(time.Second)
			w.stop()
			left := waitNoKeys(w.kv, names, requestTimeout+ghostGrace)
			for _, k := range left {
				t.Errorf("key left after every client stopped: %s", k)
			}

			r := faultReport{
				Fault:           f.name,
				Acquisitions:    w.acquisitions.Load(),
				FencedAccepted:  w.accepted.Load(),
				FencedRejected:  w.rejected.Load(),
				FencedUnknown:   w.unknown.Load(),
				ElectionRecords: w.electionRecords.Load(),
				GhostKeys:       len(ghosts),
				KeysLeft:        len(left),
				RecoverySeconds: recovery.Seconds(),
				ClientOverrunMS: float64(w.maxOverrun.Load()) / 1e6,
				ProxyOverruns:   overrunLogs(ps),
				Errors:          w.errs,
				Extra:           map[string]any{},
			}
			for k, v := range extra {
				r.Extra[k] = v
			}
			for _, n := range w.names {
				r.Locks.add(checkRecords(t, w.kv, "rec/", n))
			}
			r.Election = checkRecords(t, w.kv, "erec/", w.election)
			if r.Locks.Records == 0 || r.Election.Records == 0 {
				t.Errorf("no records to check: %+v", r)
			}
			if r.ProxyOverruns > 0 {
				t.Errorf("the proxies logged %d calls that outlived their deadline by more than the request timeout", r.ProxyOverruns)
			}
			if over := time.Duration(w.maxOverrun.Load()); over > requestTimeout {
				t.Errorf("a call returned %s after its deadline", over)
			}
			t.Logf("%s: %d acquisitions, fenced writes %d accepted / %d rejected / %d unknown, %d election records, recovery %.1fs, ghosts %d",
				f.name, r.Acquisitions, r.FencedAccepted, r.FencedRejected, r.FencedUnknown, r.ElectionRecords, r.RecoverySeconds, r.GhostKeys)
			mu.Lock()
			reports = append(reports, r)
			mu.Unlock()
		})
	}
}

// writeReport appends the figures as JSON to $COORDPROXY_E2E_REPORT, if
// set, for docs/reliability.md.
func writeReport(t *testing.T, kind string, v any) {
	path := os.Getenv("COORDPROXY_E2E_REPORT")
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, _ := json.MarshalIndent(map[string]any{kind: v}, "", "  ")
	f.Write(append(b, '\n'))
}
