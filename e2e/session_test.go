package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/client"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Sessions end to end: holder processes (this test binary in the holder
// role) that take a lock, a semaphore place, a write lock or leadership
// through a session over two coordproxy replicas, in front of three etcd
// members; then they are killed, paused or cut off, or the replica serving
// their session is killed or drained.

const (
	holderEnv   = "COORDPROXY_E2E_HOLDER" // lock, semaphore, rwlock or campaign
	holderAddrs = "COORDPROXY_E2E_HOLDER_ADDRS"
	holderName  = "COORDPROXY_E2E_HOLDER_NAME"
)

// sessionTTL is the holders' lease TTL: failover must not wait for it.
const sessionTTL = 30

// holderMain is the holder process: it takes kind on name through a session,
// prints "HELD <fencing token> <lease hex>", and holds until killed. A line
// "write RESOURCE" on stdin makes it write RESOURCE fenced with its token,
// and print WROTE or REFUSED.
func holderMain(kind string) int {
	cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(os.Getenv(holderAddrs), ","), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx := context.Background()
	s, err := client.NewSession(cli, client.WithTTL(sessionTTL))
	if err != nil {
		fmt.Fprintln(os.Stderr, "session:", err)
		return 1
	}
	token, err := take(ctx, s, kind, os.Getenv(holderName), "holder")
	if err != nil {
		fmt.Fprintln(os.Stderr, kind+":", err)
		return 1
	}
	fmt.Printf("HELD %d %x\n", token, int64(s.Lease()))
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if res, ok := strings.CutPrefix(sc.Text(), "write "); ok {
			// Retried while the connection recovers (a Txn that writes is
			// not retried by etcd's client); fenced, it is safe to repeat.
			wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			var err error
			for {
				ok, err = fencedWrite(wctx, cli, res, token)
				if err == nil || wctx.Err() != nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			cancel()
			switch {
			case err != nil:
				fmt.Println("ERROR", err)
			case ok:
				fmt.Println("WROTE")
			default:
				fmt.Println("REFUSED")
			}
		}
	}
	select {}
}

// take acquires kind (lock, semaphore of one, write lock, or leadership
// with value) on name through s and returns the fencing token.
func take(ctx context.Context, s *client.Session, kind, name, value string) (int64, error) {
	switch kind {
	case "lock":
		m := client.NewMutex(s, name)
		err := m.Lock(ctx)
		return m.FencingToken(), err
	case "semaphore":
		m := client.NewSemaphore(s, name, 1)
		err := m.Acquire(ctx)
		return m.FencingToken(), err
	case "rwlock":
		m := client.NewRWMutex(s, name)
		err := m.Lock(ctx)
		return m.FencingToken(), err
	case "campaign":
		e := client.NewElection(s, name)
		err := e.Campaign(ctx, value)
		return e.Rev(), err
	}
	return 0, fmt.Errorf("no such kind %q", kind)
}

// fencedWrite writes token to resource unless a newer token wrote it: the
// resource keeps the highest token it has seen (zero-padded, so that etcd's
// byte order is the numbers' order).
func fencedWrite(ctx context.Context, kv *clientv3.Client, resource string, token int64) (bool, error) {
	v := fmt.Sprintf("%020d", token)
	resp, err := kv.Txn(ctx).If(clientv3.Compare(clientv3.Value(resource), "<", v)).
		Then(clientv3.OpPut(resource, v)).Else().Commit()
	if err != nil {
		return false, err
	}
	if !resp.Succeeded {
		// A resource never written: the compare fails on a missing key.
		resp, err = kv.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(resource), "=", 0)).
			Then(clientv3.OpPut(resource, v)).Commit()
		if err != nil {
			return false, err
		}
	}
	return resp.Succeeded, nil
}

// holderProc is a running holder process.
type holderProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	token int64
	lease int64
}

func startHolder(t *testing.T, kind, name string, addrs ...string) *holderProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), holderEnv+"="+kind, holderAddrs+"="+strings.Join(addrs, ","), holderName+"="+name)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &holderProc{cmd: cmd, stdin: stdin, lines: make(chan string, 16)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
		close(h.lines)
	}()
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	select {
	case l, ok := <-h.lines:
		if _, err := fmt.Sscanf(l, "HELD %d %x", &h.token, &h.lease); !ok || err != nil {
			t.Fatalf("holder %s %s: %q", kind, name, l)
		}
	case <-time.After(time.Minute):
		t.Fatalf("holder %s %s did not hold within a minute", kind, name)
	}
	return h
}

func (h *holderProc) signal(s syscall.Signal) { h.cmd.Process.Signal(s) }

// proxyMetric sums a metric's series on a proxy's /metrics.
func proxyMetric(t *testing.T, addr, name string, labels map[string]string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var n float64
series:
	for _, m := range families[name].GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range labels {
			if have[k] != v {
				continue series
			}
		}
		n += m.GetGauge().GetValue() + m.GetCounter().GetValue()
	}
	return n
}

func revokedGone(t *testing.T, ps []*proxyProc) float64 {
	var n float64
	for _, p := range ps {
		n += proxyMetric(t, p.addr, "coordproxy_sessions_ended_total", map[string]string{"how": "gone"})
	}
	return n
}

// waiterFor starts, in this process, the next holder of kind on name
// through its own session on addr, and returns the channel that gets its
// fencing token when it holds.
func waiterFor(t *testing.T, ctx context.Context, kind, name, addr string) (<-chan int64, <-chan error) {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{addr}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	s, err := client.NewSession(cli, client.WithTTL(sessionTTL))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	got, failed := make(chan int64, 1), make(chan error, 1)
	go func() {
		token, err := take(ctx, s, kind, name, "next")
		if err != nil {
			failed <- err
			return
		}
		got <- token
	}()
	return got, failed
}

func waitKeyCount(t *testing.T, kv *clientv3.Client, prefix string, n int) {
	t.Helper()
	waitFor(t, 30*time.Second, fmt.Sprintf("%d keys under %s", n, prefix), func() bool {
		resp, err := kv.Get(context.Background(), prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == int64(n)
	})
}

func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// A holder process SIGKILLed: the next waiter holds (and, for an election,
// Observe shows the next leader) as soon as the proxy revokes the dead
// process's session lease, long before its 30 s TTL; each hand-over is
// such a revoke, and the next holder's fenced write of the resource the
// killed one wrote is accepted (its token is newer).
func TestSessions_aKilledHolderHandsOverAtOnce(t *testing.T) {
	c := startCluster(t, 3)
	ps := startProxies(t, c, 2)
	kv := c.client()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	addrs := []string{ps[0].addr, ps[1].addr}

	const trials = 20
	var all []time.Duration
	report := map[string]any{}
	for _, kind := range []string{"lock", "semaphore", "rwlock", "campaign"} {
		var took []time.Duration
		for i := range trials {
			name := fmt.Sprintf("killed-%s-%d", kind, i)
			h := startHolder(t, kind, name, addrs...)
			var observed <-chan *coordproxyv1.ObserveResponse
			if kind == "campaign" {
				ocli := proxytest.Client(t, addrs[i%2])
				osess, err := client.NewSession(ocli, client.WithTTL(sessionTTL))
				if err != nil {
					t.Fatal(err)
				}
				octx, ocancel := context.WithCancel(ctx)
				defer ocancel()
				observed = client.NewElection(osess, name).Observe(octx)
				if first := <-observed; first.GetLeader().GetCreateRevision() != h.token {
					t.Fatalf("Observe's first answer %v, want the holder (rev %d)", first, h.token)
				}
			}
			// The holder writes the resource it guards, fenced.
			resource := "resource/" + name
			fmt.Fprintln(h.stdin, "write "+resource)
			if l := <-h.lines; l != "WROTE" {
				t.Fatalf("%s %d: the holder's fenced write: %q", kind, i, l)
			}
			got, failed := waiterFor(t, ctx, kind, name, addrs[(i+1)%2])
			waitKeyCount(t, kv, name+"/", 2)
			before := revokedGone(t, ps)

			killed := time.Now()
			h.signal(syscall.SIGKILL)
			var token int64
			select {
			case token = <-got:
			case err := <-failed:
				t.Fatalf("%s %d: the waiter failed: %v", kind, i, err)
			case <-ctx.Done():
				t.Fatalf("%s %d: the waiter was not granted", kind, i)
			}
			if observed != nil {
				for ev := range observed {
					if ev.Event == coordproxyv1.ObserveResponse_EVENT_ELECTED && ev.GetLeader().GetCreateRevision() == token {
						break
					}
				}
			}
			took = append(took, time.Since(killed))
			if ok, err := fencedWrite(ctx, kv, resource, token); err != nil || !ok {
				t.Fatalf("%s %d: the next holder's fenced write (token %d, the killed one's %d): %v, %v", kind, i, token, h.token, ok, err)
			}
			if n := revokedGone(t, ps); n != before+1 {
				t.Fatalf("%s %d: %v session leases revoked as gone, want %v: the hand-over did not come from the revoke", kind, i, n, before+1)
			}
			ttl, err := kv.TimeToLive(ctx, clientv3.LeaseID(h.lease))
			if err != nil || ttl.TTL != -1 {
				t.Fatalf("%s %d: the killed holder's lease: %v, %v; want it revoked", kind, i, ttl, err)
			}
		}
		report[kind] = map[string]any{"trials": len(took), "p50_ms": percentile(took, 0.5).Milliseconds(), "p99_ms": percentile(took, 0.99).Milliseconds(), "max_ms": slices.Max(took).Milliseconds()}
		all = append(all, took...)
	}
	report["all"] = map[string]any{"trials": len(all), "p50_ms": percentile(all, 0.5).Milliseconds(), "p99_ms": percentile(all, 0.99).Milliseconds(), "max_ms": slices.Max(all).Milliseconds()}
	t.Logf("SIGKILLed holder → next holder (TTL %d s): %v", sessionTTL, report)
	writeReport(t, "sessions_killed", report)
}

// A holder paused (SIGSTOP) past the server's keepalive bound, or cut off
// from its replica by a partition, loses its session as it would lose its
// lease: the next holder wins, and the paused one's late fenced write is
// refused.
func TestSessions_aPausedOrCutOffHolderLosesItAndItsLateWriteIsRefused(t *testing.T) {
	c := startCluster(t, 3)
	ps := startProxies(t, c, 2, "--grpc-keepalive-interval", "1s", "--grpc-keepalive-timeout", "1s")
	kv := c.client()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, how := range []string{"paused", "cut off"} {
		t.Run(how, func(t *testing.T) {
			name := "lost-" + strings.ReplaceAll(how, " ", "-")
			resource := "resource/" + name
			var h *holderProc
			var cut, heal func()
			if how == "paused" {
				h = startHolder(t, "lock", name, ps[0].addr, ps[1].addr)
				cut = func() { h.signal(syscall.SIGSTOP) }
				heal = func() { h.signal(syscall.SIGCONT) }
			} else {
				fp, url := proxytest.FaultProxy(t, "http://"+ps[0].addr)
				h = startHolder(t, "lock", name, strings.TrimPrefix(url, "http://"))
				cut = func() { fp.PauseTx(); fp.PauseRx() }
				heal = func() { fp.UnpauseTx(); fp.UnpauseRx() }
			}
			defer heal()
			got, failed := waiterFor(t, ctx, "lock", name, ps[1].addr)
			waitKeyCount(t, kv, name+"/", 2)
			cutAt := time.Now()
			cut()
			var token int64
			select {
			case token = <-got:
			case err := <-failed:
				t.Fatalf("the waiter failed: %v", err)
			case <-ctx.Done():
				t.Fatal("the waiter was not granted")
			}
			t.Logf("holder %s → next holder in %s (keepalive 1 s + 1 s, grace 250 ms, TTL %d s)", how, time.Since(cutAt).Round(time.Millisecond), sessionTTL)
			writeReport(t, "sessions_"+strings.ReplaceAll(how, " ", "_"), map[string]any{"ms": time.Since(cutAt).Milliseconds()})
			if ok, err := fencedWrite(ctx, kv, resource, token); err != nil || !ok {
				t.Fatalf("the new holder's fenced write: %v, %v", ok, err)
			}
			heal() // the process runs again, the partition is over
			fmt.Fprintln(h.stdin, "write "+resource)
			select {
			case l := <-h.lines:
				if l != "REFUSED" {
					t.Fatalf("the old holder's late fenced write: %q, want REFUSED", l)
				}
			case <-ctx.Done():
				t.Fatal("the old holder did not answer")
			}
			ttl, err := kv.TimeToLive(ctx, clientv3.LeaseID(h.lease))
			if err != nil || ttl.TTL != -1 {
				t.Fatalf("the lost holder's lease: %v, %v; want it revoked", ttl, err)
			}
		})
	}
}

// A replica that is SIGKILLed, or drained (SIGTERM), releases nothing: the
// holder's session resumes through the other replica with the same lease,
// its lock stays, no session lease is revoked and none is leaked; and the
// session still ends the right way when its holder then dies.
func TestSessions_aReplicaKilledOrDrainedReleasesNothing(t *testing.T) {
	c := startCluster(t, 3)
	ps := startProxies(t, c, 2)
	kv := c.client()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	h := startHolder(t, "lock", "kept", ps[0].addr, ps[1].addr)
	held, err := kv.Get(ctx, "kept/", clientv3.WithPrefix())
	if err != nil || len(held.Kvs) != 1 {
		t.Fatalf("the holder's key: %v, %v", held, err)
	}
	serving := func() *proxyProc {
		for _, p := range ps {
			if p.running() && proxyMetric(t, p.addr, "coordproxy_sessions", nil) == 1 {
				return p
			}
		}
		return nil
	}
	for _, how := range []string{"SIGKILL", "drain"} {
		var on *proxyProc
		waitFor(t, 30*time.Second, "the session on a replica", func() bool { on = serving(); return on != nil })
		if how == "SIGKILL" {
			on.kill()
		} else {
			on.stop()
		}
		waitFor(t, 60*time.Second, "the session resumed on the other replica", func() bool {
			p := serving()
			return p != nil && p != on
		})
		now, err := kv.Get(ctx, "kept/", clientv3.WithPrefix())
		if err != nil || len(now.Kvs) != 1 || now.Kvs[0].CreateRevision != held.Kvs[0].CreateRevision {
			t.Fatalf("after a replica's %s: the lock %v, %v; want the holder's key of revision %d still there", how, now, err, held.Kvs[0].CreateRevision)
		}
		ttl, err := kv.TimeToLive(ctx, clientv3.LeaseID(h.lease))
		if err != nil || ttl.TTL <= 0 {
			t.Fatalf("after a replica's %s: the holder's lease %v, %v", how, ttl, err)
		}
		if n := revokedGone(t, runningOf(ps)); n != 0 {
			t.Fatalf("after a replica's %s: %v sessions revoked as gone", how, n)
		}
		on.start() // back for the next round
	}
	// The holder dies now: whichever replica serves it revokes.
	h.signal(syscall.SIGKILL)
	waitFor(t, 30*time.Second, "the dead holder's lease revoked", func() bool {
		ttl, err := kv.TimeToLive(ctx, clientv3.LeaseID(h.lease))
		return err == nil && ttl.TTL == -1
	})
	leases, err := kv.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(leases.Leases) != 0 {
		t.Fatalf("leases left in etcd: %v", leases.Leases)
	}
}

func runningOf(ps []*proxyProc) []*proxyProc {
	var out []*proxyProc
	for _, p := range ps {
		if p.running() {
			out = append(out, p)
		}
	}
	return out
}

// `coordproxy lock NAME -- CMD` holds its lease through a session: SIGKILL
// of the CLI hands the lock to the next waiter at once.
func TestSessions_aKilledCLIHandsItsLockOver(t *testing.T) {
	_, bin := mustBinaries(t)
	c := startCluster(t, 1)
	ps := startProxies(t, c, 2)
	kv := c.client()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var took []time.Duration
	for i := range 5 {
		name := fmt.Sprintf("cli-%d", i)
		cmd := exec.Command(bin, "lock", "--addr", ps[0].addr+","+ps[1].addr, "--ttl", fmt.Sprint(sessionTTL), name, "--", "sleep", "600")
		var stderr proxytest.LockedBuffer
		cmd.Stderr = &stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() })
		waitFor(t, 30*time.Second, "the CLI holding "+name, func() bool { return strings.Contains(stderr.String(), "holding") })
		got, failed := waiterFor(t, ctx, "lock", name, ps[i%2].addr)
		waitKeyCount(t, kv, name+"/", 2)
		killed := time.Now()
		cmd.Process.Signal(syscall.SIGKILL) // the CLI only: its command lives on
		select {
		case <-got:
		case err := <-failed:
			t.Fatalf("the waiter failed: %v", err)
		case <-ctx.Done():
			t.Fatal("the waiter was not granted")
		}
		took = append(took, time.Since(killed))
	}
	t.Logf("SIGKILLed `coordproxy lock` → next holder: p50 %s, max %s over %d trials (TTL %d s)", percentile(took, 0.5), slices.Max(took), len(took), sessionTTL)
	writeReport(t, "sessions_cli_killed", map[string]any{"trials": len(took), "p50_ms": percentile(took, 0.5).Milliseconds(), "max_ms": slices.Max(took).Milliseconds()})
	if n := revokedGone(t, ps); n != float64(len(took)) {
		t.Fatalf("%v session leases revoked as gone, want %d", n, len(took))
	}
}

// A release retried with an earlier acquisition's fencing token, through
// the other replica, leaves the newer acquisition of the same key held (all
// three services).
func TestSessions_aRetriedReleaseNeverHitsANewerHold(t *testing.T) {
	c := startCluster(t, 3)
	ps := startProxies(t, c, 2)
	kv := c.client()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conns := []*clientv3.Client{proxytest.Client(t, ps[0].addr), proxytest.Client(t, ps[1].addr)}
	lease, err := conns[0].Grant(ctx, sessionTTL)
	if err != nil {
		t.Fatal(err)
	}
	defer kv.Revoke(context.Background(), lease.ID)
	type service struct {
		name    string
		acquire func(c *clientv3.Client, name string) (*coordproxyv1.Held, error)
		release func(c *clientv3.Client, h *coordproxyv1.Held) error
	}
	for _, svc := range []service{
		{"lock", func(c *clientv3.Client, name string) (*coordproxyv1.Held, error) {
			return coordproxyv1.NewLockServiceClient(c.ActiveConnection()).Lock(ctx, &coordproxyv1.LockRequest{Name: []byte(name), Lease: int64(lease.ID)})
		}, func(c *clientv3.Client, h *coordproxyv1.Held) error {
			_, err := coordproxyv1.NewLockServiceClient(c.ActiveConnection()).Unlock(ctx, &coordproxyv1.UnlockRequest{Key: h.Key, FencingToken: h.FencingToken})
			return err
		}},
		{"semaphore", func(c *clientv3.Client, name string) (*coordproxyv1.Held, error) {
			return coordproxyv1.NewSemaphoreServiceClient(c.ActiveConnection()).Acquire(ctx, &coordproxyv1.AcquireRequest{Name: []byte(name), Lease: int64(lease.ID), Limit: 1})
		}, func(c *clientv3.Client, h *coordproxyv1.Held) error {
			_, err := coordproxyv1.NewSemaphoreServiceClient(c.ActiveConnection()).Release(ctx, &coordproxyv1.ReleaseRequest{Key: h.Key, FencingToken: h.FencingToken})
			return err
		}},
		{"rwlock", func(c *clientv3.Client, name string) (*coordproxyv1.Held, error) {
			return coordproxyv1.NewRWLockServiceClient(c.ActiveConnection()).WLock(ctx, &coordproxyv1.RWLockRequest{Name: []byte(name), Lease: int64(lease.ID)})
		}, func(c *clientv3.Client, h *coordproxyv1.Held) error {
			_, err := coordproxyv1.NewRWLockServiceClient(c.ActiveConnection()).Unlock(ctx, &coordproxyv1.UnlockRequest{Key: h.Key, FencingToken: h.FencingToken})
			return err
		}},
	} {
		name := "retried-" + svc.name
		first, err := svc.acquire(conns[0], name)
		if err != nil {
			t.Fatal(err)
		}
		if err := svc.release(conns[0], first); err != nil {
			t.Fatal(err)
		}
		second, err := svc.acquire(conns[0], name)
		if err != nil {
			t.Fatal(err)
		}
		// The first release's late retry, through the other replica.
		if err := svc.release(conns[1], first); err != nil {
			t.Fatalf("%s: the retried release: %v, want success", svc.name, err)
		}
		resp, err := kv.Get(ctx, name+"/", clientv3.WithPrefix())
		if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].CreateRevision != second.FencingToken {
			t.Fatalf("%s: after the retried release %v, %v; want the second acquisition (revision %d) held", svc.name, resp, err, second.FencingToken)
		}
		if err := svc.release(conns[1], second); err != nil {
			t.Fatal(err)
		}
	}
}
