package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// The test binary plays the etcd and proxy children, as coordbench does.
func TestMain(m *testing.M) {
	if code, ok := serveRole(os.Args[1:], os.Stdout, os.Stderr); ok {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// A short run of every scenario against a real etcd and a real proxy: the
// command must work end to end. Figures are not judged here (the machine may
// be slow); what the proxy must do regardless of speed is.
func TestCoordbench_runsEveryScenarioAgainstBoth(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the benchmark's end-to-end run is in the full suite")
	}
	dataDir := filepath.Join(t.TempDir(), "etcd")
	results, stdout := runBench(t, dataDir, "-duration", "300ms", "-observers", "8", "-waiters", "200", "-waiters-timeout", "60s", "-held", "200", "-sessions", "50", "-watchers", "20", "-leases", "200")
	if len(results) != 2*len(scenarios) {
		t.Fatalf("%d results, want %d", len(results), 2*len(scenarios))
	}
	// The scenarios that must not inherit etcd's state ran on etcds of
	// their own.
	for _, s := range scenarios {
		if _, err := os.Stat(dataDir + "." + s.id); (err == nil) != s.freshEtcd {
			t.Errorf("scenario %s: fresh etcd %v, but its data dir: %v", s.id, s.freshEtcd, err)
		}
	}
	for _, r := range results {
		if r.Count == 0 {
			t.Errorf("%s on %s: nothing done", r.Scenario, r.Target)
		}
		// No latency outlasts the run (a time.Since of a zero time would).
		if r.P50MS > r.P99MS || r.P99MS > r.MaxMS || r.MaxMS > 10*60*1000 {
			t.Errorf("%s on %s: p50 %v ms, p99 %v ms, max %v ms", r.Scenario, r.Target, r.P50MS, r.P99MS, r.MaxMS)
		}
		if _, noisy := r.Extra["b_alone_p99_ms"]; noisy {
			// Three phases, no one op count: the noisy neighbour's own
			// figures instead of costs.
			for _, k := range []string{"b_p99_ratio", "b_rate_ratio", "b_unlock_p99_ms", "flood_alone_ops", "flood_ops"} {
				if v, ok := r.Extra[k].(float64); !ok || v <= 0 {
					t.Errorf("%s on %s: %s = %v", r.Scenario, r.Target, k, r.Extra[k])
				}
			}
			if lost, ok := r.Extra["b_sessions_lost"].(string); !ok || !strings.HasSuffix(lost, fmt.Sprintf("/%d", noisySessions)) {
				t.Errorf("%s on %s: b_sessions_lost = %v", r.Scenario, r.Target, r.Extra["b_sessions_lost"])
			}
			if p, ok := r.Extra["waiters_parked"]; ok && p.(float64)+r.Extra["waiters_refused"].(float64) != 200 {
				t.Errorf("%s on %s: %v waiters parked and %v refused, want 200 in all", r.Scenario, r.Target, p, r.Extra["waiters_refused"])
			}
			continue
		}
		// Cost is measured on both sides: etcd's CPU and requests per op,
		// the proxy's CPU on its own side.
		for _, k := range []string{"etcd_cpu_us_per_op", "etcd_requests_per_op", "etcd_watch_msgs_per_op"} {
			if _, ok := r.Extra[k]; !ok {
				t.Errorf("%s on %s: no %s (%v)", r.Scenario, r.Target, k, r.Extra)
			}
		}
		for _, k := range []string{"proxy_cpu_us_per_op", "proxy_allocs_per_op"} {
			if _, ok := r.Extra[k]; ok != (r.Target == "coordproxy") {
				t.Errorf("%s on %s: %s reported %v", r.Scenario, r.Target, k, ok)
			}
		}
		if r.Target != "coordproxy" {
			// etcd's own Lock+Unlock is two requests (Lock, Unlock) and no
			// watch message: the counts must say so, whatever the speed.
			if r.Scenario == "Lock+Unlock, 1 client" {
				if n := r.Extra["etcd_requests_per_op"].(float64); n < 2 || n > 2.5 {
					t.Errorf("native Lock+Unlock: %v etcd requests per op, want 2 (and a little setup)", n)
				}
				if n := r.Extra["etcd_watch_msgs_per_op"].(float64); n > 0.1 {
					t.Errorf("native Lock+Unlock: %v watch messages per op, want 0", n)
				}
			}
			continue
		}
		if r.Errors != 0 {
			t.Errorf("%s through the proxy: %d errors (%v)", r.Scenario, r.Errors, r.Extra["first_error"])
		}
		switch {
		case strings.Contains(r.Scenario, "waiters"):
			if r.Extra["parked"] != float64(200) || r.Extra["etcd_watchers_added"] != float64(1) {
				t.Errorf("waiters through the proxy: %v; want 200 parked on 1 etcd watcher", r.Extra)
			}
		case strings.Contains(r.Scenario, "locks held"):
			if r.Count != 200 || r.Extra["etcd_watchers_added"] != float64(0) {
				t.Errorf("held locks through the proxy: %d held, %v; want 200 held on no etcd watcher", r.Count, r.Extra)
			}
		case strings.Contains(r.Scenario, "sessions held"):
			if r.Count != 50 || r.Extra["held_proxy_heartbeats_per_s"] == nil || r.Extra["held_proxy_cpu_cores"] == nil {
				t.Errorf("sessions through the proxy: %d opened, %v; want 50 and what holding them costs the proxy", r.Count, r.Extra)
			}
		case strings.Contains(r.Scenario, "Observe"):
			if r.Extra["proclaims_undelivered"] != float64(0) {
				t.Errorf("observe through the proxy: %v; want every proclaim delivered", r.Extra)
			}
		}
	}
	if rows := strings.Count(stdout, "\n| "); rows < len(scenarios) {
		t.Errorf("table has %d rows:\n%s", rows, stdout)
	}
}

// -pin puts etcd on CPU 0 and the rest on the others; it needs 2 CPUs.
func TestCoordbench_pin(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run([]string{"-pin", "-scenarios", "uncontended", "-duration", "200ms", "-data-dir", filepath.Join(t.TempDir(), "etcd")}, &stdout, &stderr)
	if runtime.NumCPU() < 2 {
		if code != 2 || !strings.Contains(stderr.String(), "-pin needs at least 2 CPUs") {
			t.Fatalf("exit %d on one CPU: %s", code, stderr.String())
		}
		return
	}
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), "| Lock+Unlock, 1 client |") {
		t.Fatalf("no result:\n%s", stdout.String())
	}
}

// -etcd-profile saves etcd's own CPU profile of each scenario on each
// target (pprof's format: gzipped protocol buffers).
func TestCoordbench_etcdProfile(t *testing.T) {
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	code := run([]string{"-etcd-profile", dir, "-scenarios", "uncontended", "-duration", "1s", "-data-dir", filepath.Join(t.TempDir(), "etcd")}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr.String())
	}
	for _, target := range []string{"etcd", "coordproxy"} {
		b, err := os.ReadFile(filepath.Join(dir, "uncontended-"+target+".pprof"))
		if err != nil {
			t.Fatal(err)
		}
		if len(b) < 100 || b[0] != 0x1f || b[1] != 0x8b {
			t.Errorf("etcd's profile on %s: %d bytes, not a pprof profile", target, len(b))
		}
	}
}

// -etcd-cpu caps etcd in a cgroup where it can (as root), and says so;
// where it cannot, it says why and runs uncapped. Either way it runs, and
// leaves no cgroup behind.
func TestCoordbench_etcdCPU(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run([]string{"-etcd-cpu", "0.5", "-scenarios", "uncontended", "-duration", "200ms", "-data-dir", filepath.Join(t.TempDir(), "etcd")}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr.String())
	}
	capped := strings.Contains(stderr.String(), "etcd capped at 0.5 CPU")
	if !capped && !strings.Contains(stderr.String(), "cannot cap etcd's CPU") {
		t.Fatalf("neither capped nor a line saying why not:\n%s", stderr.String())
	}
	for _, dir := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/cpu"} {
		if left, _ := filepath.Glob(filepath.Join(dir, "coordbench-*")); len(left) > 0 {
			t.Errorf("cgroups left behind: %v", left)
		}
	}
}

// -peer: etcd's own grpc-proxy as a third target, its costs measured like
// the proxy's; every watcher receives every event in order on all three;
// keep-alives through coordproxy cost etcd a few streams, not one per
// connection.
func TestCoordbench_peerIsAThirdTarget(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the benchmark's end-to-end run is in the full suite")
	}
	results, stdout := runBench(t, filepath.Join(t.TempDir(), "etcd"), "-peer", "-scenarios", "uncontended,watchers,watchkeys,keepalives", "-duration", "300ms", "-watchers", "20", "-leases", "200")
	targets := map[string]int{}
	for _, r := range results {
		targets[r.Target]++
		if r.Count == 0 {
			t.Errorf("%s on %s: nothing done", r.Scenario, r.Target)
		}
		if r.Target == "grpc-proxy" {
			for _, k := range []string{"proxy_cpu_us_per_op", "proxy_allocs_per_op", "etcd_requests_per_op"} {
				if _, ok := r.Extra[k]; !ok {
					t.Errorf("%s on grpc-proxy: no %s", r.Scenario, k)
				}
			}
		}
		if _, ok := r.Extra["watchers"]; ok {
			for _, k := range []string{"events_missed", "events_misordered", "puts_undelivered"} {
				if r.Extra[k].(float64) != 0 {
					t.Errorf("%s on %s: %s = %v", r.Scenario, r.Target, k, r.Extra[k])
				}
			}
			// One per watcher natively; through coordproxy one per key
			// watched (shared watches).
			want := map[string]float64{"etcd": 20, "coordproxy": 1}[r.Target]
			if strings.Contains(r.Scenario, "a key each") {
				want = map[string]float64{"etcd": 20, "coordproxy": 20}[r.Target]
			}
			if got := r.Extra["etcd_watchers_added"].(float64); want != 0 && got != want {
				t.Errorf("%s on %s: etcd watchers added for 20 watchers: %v, want %v", r.Scenario, r.Target, got, want)
			}
		}
		if _, ok := r.Extra["leases"]; ok {
			// Natively a stream per connection; through coordproxy the
			// streams of one credentials: 1, up to 8 under a backlog.
			n := r.Extra["etcd_keepalive_streams_open"].(float64)
			if r.Target == "etcd" && n != 64 || r.Target == "coordproxy" && (n < 1 || n > 8) {
				t.Errorf("%s on %s: %v etcd keep-alive streams, want 64 natively, 1 to 8 through coordproxy", r.Scenario, r.Target, n)
			}
			if r.Extra["leases_lost"].(float64) != 0 {
				t.Errorf("%s on %s: %v leases lost", r.Scenario, r.Target, r.Extra["leases_lost"])
			}
		}
	}
	if targets["etcd"] != 4 || targets["grpc-proxy"] != 4 || targets["coordproxy"] != 4 {
		t.Errorf("results by target: %v, want four each of etcd, grpc-proxy, coordproxy", targets)
	}
	if !strings.Contains(stdout, "| grpc-proxy / native |") {
		t.Errorf("no peer table:\n%s", stdout)
	}
}

// runBench runs coordbench with args, its etcd's data in dataDir, and
// returns its results (its -json) and what it printed; a failed run fails
// t.
func runBench(t *testing.T, dataDir string, args ...string) ([]result, string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "bench.json")
	var stdout, stderr bytes.Buffer
	if code := run(append(args, "-data-dir", dataDir, "-json", out), &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr.String())
	}
	var results []result
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &results); err != nil {
		t.Fatal(err)
	}
	return results, stdout.String()
}
