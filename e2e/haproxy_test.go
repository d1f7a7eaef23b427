package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/proxy/proxytest"
	clientv3 "go.etcd.io/etcd/client/v3"
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.uber.org/zap"
)

// The load-balanced deployment, for real: HAProxy (Debian's haproxy) in
// front of two coordproxy processes, configured from the project's own
// deploy/compose/haproxy.cfg rendered for loopback ports, carrying the
// fenced workload of the fault matrix while one replica is drained and the
// other SIGKILLed.

// haproxyBinary finds HAProxy, installing Debian's package when it is
// missing and this is a Debian machine where the test may (root): the suite
// needs no set-up by hand. .ci/run installs it as well.
func haproxyBinary(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"haproxy", "/usr/sbin/haproxy"} {
		if bin, err := exec.LookPath(p); err == nil {
			return bin
		}
	}
	if _, err := exec.LookPath("apt-get"); err == nil && os.Geteuid() == 0 {
		install := func() ([]byte, error) {
			cmd := exec.Command("apt-get", "install", "-y", "haproxy")
			cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
			return cmd.CombinedOutput()
		}
		if _, err := install(); err != nil { // the package lists may be stale
			exec.Command("apt-get", "update").Run()
			if out, err := install(); err != nil {
				t.Fatalf("haproxy is missing and apt-get install haproxy failed: %v\n%s", err, tail(out, 2000))
			}
		}
		if bin, err := exec.LookPath("/usr/sbin/haproxy"); err == nil {
			return bin
		}
	}
	t.Fatal("haproxy is missing: install Debian's haproxy package (.ci/run does)")
	return ""
}

// renderHAProxy is deploy/compose/haproxy.cfg with Compose's names and
// ports replaced by loopback ones: the frontend on lb, the stats page on
// stats, the replicas at backends; no Docker DNS.
func renderHAProxy(t *testing.T, lb, stats string, backends []string) string {
	t.Helper()
	root, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(root, "..", "deploy", "compose", "haproxy.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(data)
	for _, r := range []struct{ old, new string }{
		{"bind :23790", "bind " + lb},
		{"bind :8404", "bind " + stats},
		{" resolvers docker\n", "\n"},
		{"resolvers docker\n    nameserver dns 127.0.0.11:53\n    hold valid 10s\n", ""},
	} {
		if !strings.Contains(cfg, r.old) {
			t.Fatalf("deploy/compose/haproxy.cfg has no %q to render", r.old)
		}
		cfg = strings.ReplaceAll(cfg, r.old, r.new)
	}
	for i, b := range backends {
		name := fmt.Sprintf("coordproxy-%d:23790", i+1)
		if !strings.Contains(cfg, name) {
			t.Fatalf("deploy/compose/haproxy.cfg has no server %s", name)
		}
		cfg = strings.ReplaceAll(cfg, name, b)
	}
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// startHAProxy runs HAProxy on cfg in the foreground until cleanup.
func startHAProxy(t *testing.T, bin, cfg, lb string) *proxytest.LockedBuffer {
	t.Helper()
	if out, err := exec.Command(bin, "-c", "-f", cfg).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	var log proxytest.LockedBuffer
	cmd := exec.Command(bin, "-db", "-f", cfg)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("--- haproxy log (last 3000 bytes) ---\n%s", tail([]byte(log.String()), 3000))
		}
	})
	waitFor(t, 30*time.Second, "haproxy listening", func() bool {
		c, err := net.DialTimeout("tcp", lb, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return &log
}

// observer keeps an Observe stream of name open through addr, opening it
// again whenever it ends, and counts the leaders it sees.
type observer struct {
	seen    atomic.Int64
	reopens atomic.Int64
}

func observe(ctx context.Context, t *testing.T, addr, name string) *observer {
	o := &observer{}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{addr}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	go func() {
		el := epb.NewElectionClient(cli.ActiveConnection())
		for ctx.Err() == nil {
			st, err := el.Observe(ctx, &epb.LeaderRequest{Name: []byte(name)})
			if err == nil {
				for {
					if _, err := st.Recv(); err != nil {
						break
					}
					o.seen.Add(1)
				}
			}
			o.reopens.Add(1)
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return o
}

func TestLoadBalancer_haproxyInFrontOfTwoReplicasThroughADrainAndAKill(t *testing.T) {
	bin := haproxyBinary(t)
	c := startCluster(t, 3)
	// Drain longer than HAProxy needs to mark a replica down (two failed
	// checks 2 s apart).
	ps := startProxies(t, c, 2, "--drain-delay", "5s", "--shutdown-timeout", "15s")
	lb, stats := proxytest.FreeAddr(t), proxytest.FreeAddr(t)
	startHAProxy(t, bin, renderHAProxy(t, lb, stats, []string{ps[0].addr, ps[1].addr}), lb)

	w := newWorkload(t, c, ps, lockNames, electionName)
	w.proxies = []string{lb} // every client goes through the balancer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var observers []*observer
	for range 4 {
		observers = append(observers, observe(ctx, t, lb, electionName))
	}
	w.start(lockers, campaigners)
	w.waitProgress(t, time.Time{}, time.Minute)
	time.Sleep(3 * time.Second) // both replicas carry calls
	seenBy := func() int64 {
		var n int64
		for _, o := range observers {
			n += o.seen.Load()
		}
		return n
	}

	report := map[string]any{}
	for _, step := range []struct {
		name string
		do   func(p *proxyProc)
	}{
		{"drain", func(p *proxyProc) { p.stop() }},
		{"kill", func(p *proxyProc) { p.kill() }},
	} {
		// The replica that has waiting calls (after the drain, the one
		// that came back gets them: it had the fewest).
		var p *proxyProc
		waitFor(t, 30*time.Second, "a replica with waiting calls", func() bool {
			best := -1.0
			for _, q := range ps {
				if n := proxyMetric(t, q.addr, "coordproxy_waiters", nil); n > best {
					p, best = q, n
				}
			}
			return best > 0
		})
		before := seenBy()
		served := proxyMetric(t, p.addr, "grpc_server_handled_total", nil)
		waiting := proxyMetric(t, p.addr, "coordproxy_waiters", nil)
		report[step.name+"_calls_served_before"] = served
		report[step.name+"_calls_waiting_before"] = waiting
		step.do(p)
		// From the moment the replica is gone (a drain serves on for its
		// delay first).
		at := time.Now()
		recovered := w.waitProgress(t, at, recoveryBound)
		waitFor(t, recoveryBound, "Observe streams see leaders after the "+step.name, func() bool { return seenBy() > before })
		report[step.name+"_recovery_s"] = recovered.Seconds()
		t.Logf("%s of %s (%v calls served before, %v waiting): progress on every name %.1fs after it was gone", step.name, p.addr, served, waiting, recovered.Seconds())
		p.start()
		// Back in HAProxy's pool (two good checks) before the next step.
		waitFor(t, time.Minute, "the replica back in service", func() bool {
			return proxyMetric(t, p.addr, "grpc_server_handled_total", nil) > 0
		})
	}
	time.Sleep(time.Second)
	w.stop()
	cancel()
	names := append(append([]string(nil), w.names...), w.election)
	left := waitNoKeys(w.kv, names, requestTimeout+ghostGrace)
	for _, k := range left {
		t.Errorf("key left after every client stopped: %s", k)
	}
	var locks recordCheck
	for _, n := range w.names {
		locks.add(checkRecords(t, w.kv, "rec/", n))
	}
	election := checkRecords(t, w.kv, "erec/", w.election)
	if locks.Records == 0 || election.Records == 0 {
		t.Errorf("no records to check: locks %+v, election %+v", locks, election)
	}
	if n := overrunLogs(ps); n > 0 {
		t.Errorf("the proxies logged %d calls that outlived their deadline by more than the request timeout", n)
	}
	report["acquisitions"] = w.acquisitions.Load()
	report["fenced_accepted"], report["fenced_rejected"], report["fenced_unknown"] = w.accepted.Load(), w.rejected.Load(), w.unknown.Load()
	report["election_records"] = w.electionRecords.Load()
	report["observe_leaders_seen"] = seenBy()
	report["errors"] = w.errs
	t.Logf("through HAProxy: %v", report)
	writeReport(t, "haproxy", report)
}
