package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Sessions end to end: holder processes (e2e/holder) that take a lock, a
// semaphore place, a write lock or leadership through a session over two
// coordproxy replicas, in front of three etcd members; then they are
// killed, paused or cut off, or the replica serving their session is killed
// or drained. The failover cases of issue 22 are in failover_test.go.

// sessionTTL is the holders' lease TTL: failover must not wait for it.
const sessionTTL = 30

// holderProc is a running holder process (e2e/holder).
type holderProc struct {
	cmd    *exec.Cmd
	lines  chan string
	exited chan struct{}
	token  int64
	lease  int64
}

func startHolder(t *testing.T, kind, name string, addrs ...string) *holderProc {
	t.Helper()
	h, err := launchHolder(t, kind, name, addrs, sessionTTL, 0, filepath.Join(t.TempDir(), "stamps"), 100*time.Millisecond)
	if h != nil {
		t.Cleanup(h.kill)
	}
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// launchHolder starts a holder process of kind on name through addrs, with
// a lease of ttl seconds and a session window (0: the client's default),
// noting its critical section in the file stamps every every, and waits
// until it holds. The caller kills it.
func launchHolder(t *testing.T, kind, name string, addrs []string, ttl int, window time.Duration, stamps string, every time.Duration) (*holderProc, error) {
	cmd := exec.Command(mustHolderBinary(t), kind, name, strings.Join(addrs, ","), fmt.Sprint(ttl), stamps, every.String(), window.String())
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	h := &holderProc{cmd: cmd, lines: make(chan string, 16), exited: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
		close(h.lines)
		cmd.Wait()
		close(h.exited)
	}()
	select {
	case l, ok := <-h.lines:
		if _, err := fmt.Sscanf(l, "HELD %d %x", &h.token, &h.lease); !ok || err != nil {
			return h, fmt.Errorf("holder %s %s: %q", kind, name, l)
		}
	case <-time.After(time.Minute):
		return h, fmt.Errorf("holder %s %s did not hold within a minute", kind, name)
	}
	return h, nil
}

// kill SIGKILLs the holder process and waits for it.
func (h *holderProc) kill() {
	h.cmd.Process.Kill()
	<-h.exited
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
