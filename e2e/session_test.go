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
	name := os.Getenv(holderName)
	var token int64
	switch kind {
	case "lock":
		m := client.NewMutex(s, name)
		err, token = m.Lock(ctx), m.FencingToken()
	case "semaphore":
		m := client.NewSemaphore(s, name, 1)
		err, token = m.Acquire(ctx), m.FencingToken()
	case "rwlock":
		m := client.NewRWMutex(s, name)
		err, token = m.Lock(ctx), m.FencingToken()
	case "campaign":
		e := client.NewElection(s, name)
		err, token = e.Campaign(ctx, "holder"), e.Rev()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, kind+":", err)
		return 1
	}
	fmt.Printf("HELD %d %x\n", token, int64(s.Lease()))
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if res, ok := strings.CutPrefix(sc.Text(), "write "); ok {
			wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			ok, err := fencedWrite(wctx, cli, res, token)
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
		var err error
		var token int64
		switch kind {
		case "lock":
			m := client.NewMutex(s, name)
			err, token = m.Lock(ctx), m.FencingToken()
		case "semaphore":
			m := client.NewSemaphore(s, name, 1)
			err, token = m.Acquire(ctx), m.FencingToken()
		case "rwlock":
			m := client.NewRWMutex(s, name)
			err, token = m.Lock(ctx), m.FencingToken()
		case "campaign":
			e := client.NewElection(s, name)
			err, token = e.Campaign(ctx, "next"), e.Rev()
		}
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
// such a revoke, the waiter's token is newer, and nothing is left in etcd.
func TestSessions_aKilledHolderHandsOverAtOnce(t *testing.T) {
	c := startCluster(t, 3)
	ps := startProxies(t, c, 2)
	kv := c.client()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	addrs := []string{ps[0].addr, ps[1].addr}

	trials := map[string]int{"lock": 20, "semaphore": 5, "rwlock": 5, "campaign": 5}
	var all []time.Duration
	report := map[string]any{}
	for _, kind := range []string{"lock", "semaphore", "rwlock", "campaign"} {
		var took []time.Duration
		for i := range trials[kind] {
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
			if token <= h.token {
				t.Fatalf("%s %d: the next holder's token %d is not newer than the killed one's %d", kind, i, token, h.token)
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
