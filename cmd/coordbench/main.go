// Command coordbench measures coordproxy against etcd's own Lock and
// Election services, side by side in one run: it starts a real etcd (or uses
// --endpoints) and a coordproxy in front of it, runs every scenario against
// both, and prints ops/s, latency and the ratio proxy/native, with etcd's
// watcher count and both processes' memory where they matter.
//
// The machine may be noisy: read the ratios, which come from one run, rather
// than the absolute figures.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coordproxy/coordproxy/client"

	"golang.org/x/sys/unix"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

var scenarios = []scenario{
	{id: "uncontended", title: "Lock+Unlock, 1 client", run: func(ctx context.Context, b *bench, t target, title string) (result, error) {
		return lockScenario(ctx, b, t, title, 1, []string{"u"})
	}},
	{id: "parallel", title: "Lock+Unlock, 16 clients, 16 names", run: func(ctx context.Context, b *bench, t target, title string) (result, error) {
		var names []string
		for i := range 16 {
			names = append(names, fmt.Sprintf("p%d", i))
		}
		return lockScenario(ctx, b, t, title, 16, names)
	}},
	{id: "parallel64", title: "Lock+Unlock, 64 clients, 64 names", run: func(ctx context.Context, b *bench, t target, title string) (result, error) {
		var names []string
		for i := range 64 {
			names = append(names, fmt.Sprintf("q%d", i))
		}
		return lockScenario(ctx, b, t, title, 64, names)
	}},
	{id: "contended2", title: "Lock+Unlock, 2 clients, 1 name", run: func(ctx context.Context, b *bench, t target, title string) (result, error) {
		return lockScenario(ctx, b, t, title, 2, []string{"c2"})
	}},
	{id: "contended16", title: "Lock+Unlock, 16 clients, 1 name", run: func(ctx context.Context, b *bench, t target, title string) (result, error) {
		return lockScenario(ctx, b, t, title, 16, []string{"c16"})
	}},
	{id: "campaign", title: "Campaign+Proclaim+Resign, 1 client", run: campaignScenario},
	{id: "hop", title: "KV Put+Delete, 1 client (the hop alone)", run: hopScenario},
	{id: "observe", title: "Observe fan-out", run: observeScenario, freshEtcd: true},
	{id: "waiters", title: "blocked Lock waiters on 1 name", run: waitersScenario, proxyFirst: true, freshEtcd: true},
	{id: "held", title: "distinct locks held by one lease", run: heldScenario, proxyFirst: true, freshEtcd: true},
	{id: "sessions", title: "sessions held", run: sessionsScenario, proxyFirst: true, freshEtcd: true},
	{id: "keepalives", title: "leases kept alive over 64 connections", run: keepalivesScenario},
	{id: "watchers", title: "KV watchers of one prefix, one writer", run: watchersScenario},
	{id: "watchkeys", title: "KV watchers of a key each, one writer", run: watchKeysScenario},
	{id: "hotreads", title: "serializable reads of one key, 64 clients", run: hotReadsScenario},
	{id: "noisy", title: "noisy neighbour: B's Lock under a 128-client flood", run: noisyScenario, tenants: true},
	{id: "noisywaiters", title: "noisy neighbour: B's Lock beside parked waiters and a 128-client KV flood", run: noisyWaitersScenario, tenants: true},
}

// bench is one run.
type bench struct {
	duration       time.Duration
	observers      int
	waiters        int
	held           int
	watchers       int
	readCacheKeys  int
	leases         int
	sessions       int
	sessionWindow  time.Duration
	waitersTimeout time.Duration
	heapProfile    string // where the waiters scenario saves the proxy's heap profile
	// With -pin, etcd's CPUs and the others' (where coordbench and the
	// proxy run); nil without.
	etcdCPUs, restCPUs []int
	etcdURL            string
	etcd, proxy        *child
	policed            *child // with -policy: a second proxy with a policy in force
	peer               *child // with -peer: etcd's own grpc-proxy
	tenants            *child // for the noisy scenario: a proxy asking for client certificates
	pki                *tenantPKI
	progressOut        io.Writer
	seq                atomic.Int64
	runID              string
	// etcd's watchers when etcd and the proxy were (re)started: the waiters
	// scenario waits for those of earlier runs on this etcd to end (the
	// other target's, or earlier scenarios' with -endpoints) before it
	// counts its own.
	watchersAtStart    float64
	watchersAtStartErr error
}

// unique gives each scenario run its own names.
func (b *bench) unique(name string) string {
	return fmt.Sprintf("coordbench/%s/%s-%d", b.runID, name, b.seq.Add(1))
}

func (b *bench) etcdRSS() (int64, error) {
	if b.etcd == nil {
		return 0, errors.New("etcd is not a child of coordbench")
	}
	return b.etcd.rss()
}

func (b *bench) proxyRSS() (int64, error) { return b.proxy.rss() }

// progress shows a line on stderr until ctx ends.
func (b *bench) progress(ctx context.Context, title string, t target, count func() int) {
	start := time.Now()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintf(b.progressOut, "\r\033[K")
			return
		case <-tick.C:
			fmt.Fprintf(b.progressOut, "\r\033[K%s on %s: %d in %.0fs", title, t.name, count(), time.Since(start).Seconds())
		}
	}
}

func run(args []string, stdout, stderr io.Writer) int {
	if code, ok := serveRole(args, stdout, stderr); ok {
		return code
	}
	fs := flag.NewFlagSet("coordbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	endpoints := fs.String("endpoints", "", "etcd client URL to measure against (default: start a single-member etcd in a temp dir)")
	duration := fs.Duration("duration", 5*time.Second, "how long each timed scenario runs on each target")
	observers := fs.Int("observers", 128, "Observe streams in the fan-out scenario")
	waiters := fs.Int("waiters", 10000, "blocked Lock calls in the waiters scenario")
	held := fs.Int("held", 10000, "distinct locks one lease holds in the held scenario")
	watchers := fs.Int("watchers", 1000, "KV watchers of one prefix in the watchers scenario")
	etcdProfile := fs.String("etcd-profile", "", "directory for etcd's own CPU profile of each scenario on each target (<scenario>-<target>.pprof, from etcd's /debug/pprof over the run; etcd started by coordbench only)")
	readCacheKeys := fs.Int("read-cache-keys", 1024, "the proxy's --read-cache-keys (0: no read cache)")
	leases := fs.Int("leases", 10000, "leases kept alive in the keepalives scenario")
	sessionWindow := fs.Duration("session-window", client.DefaultWindow, "the window of the sessions scenario's sessions (a heartbeat every quarter of it)")
	sessions := fs.Int("sessions", 10000, "sessions held at once in the sessions scenario (heartbeating through the proxy; concurrency.Session natively)")
	waitersTimeout := fs.Duration("waiters-timeout", 90*time.Second, "bound for parking the waiters, per target")
	only := fs.String("scenarios", "", "comma-separated scenario ids to run (default all): "+scenarioIDs())
	jsonOut := fs.String("json", "", "also write the results as JSON to this file")
	cpuprofile := fs.String("proxy-cpuprofile", "", "write a CPU profile of the proxy process to this file (FILE.observe, FILE.waiters: of the proxies started afresh for those scenarios)")
	heapprofile := fs.String("proxy-heapprofile", "", "write the proxy's heap profile (after a collection, while the waiters scenario's calls are all parked) to this file; with -proxy-env GODEBUG=memprofilerate=1 it records every allocation")
	maxEtcdRequests := fs.Int("proxy-max-etcd-requests", 0, "the proxy's --max-etcd-requests (0: its default)")
	memLimit := fs.String("proxy-gomemlimit", "", "GOMEMLIMIT of the proxy process only, e.g. 230MiB (default: none)")
	var proxyEnv []string
	fs.Func("proxy-env", "NAME=VALUE set in the proxy process's environment only, e.g. GOMAXPROCS=1 (repeatable)", func(v string) error {
		if name, _, ok := strings.Cut(v, "="); !ok || name == "" {
			return fmt.Errorf("want NAME=VALUE, got %q", v)
		}
		proxyEnv = append(proxyEnv, v)
		return nil
	})
	withPeer := fs.Bool("peer", false, "also run every scenario but the noisy neighbour's through etcd's own grpc-proxy (`etcd grpc-proxy start`, target grpc-proxy) in front of the same etcd, and print native / grpc-proxy / coordproxy side by side")
	withPolicy := fs.Bool("policy", false, "also run the timed scenarios through a second proxy with a policy in force that allows them (target coordproxy+policy), to compare what the policy costs allowed calls")
	etcdCPU := fs.Float64("etcd-cpu", 0, "cap etcd's process at this many CPUs (a cgroup; needs root), so that etcd is the bottleneck, as a shared etcd is; 0: no cap")
	pin := fs.Bool("pin", false, "the sidecar layout: etcd on CPU 0, coordbench and the proxy on the other CPUs (needs at least 2)")
	dataDir := fs.String("data-dir", "", "data directory of the etcd coordbench starts, DIR.observe and DIR.waiters those of the etcds it starts afresh for those scenarios (default: a temp dir in /dev/shm if there is one, so that the disk stays out of the figures)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	var chosen []scenario
	for _, s := range scenarios {
		if *only == "" || slices.Contains(strings.Split(*only, ","), s.id) {
			chosen = append(chosen, s)
		}
	}
	if len(chosen) == 0 {
		fmt.Fprintf(stderr, "coordbench: no scenario matches %q; choose from %s\n", *only, scenarioIDs())
		return 2
	}
	var etcdCPUs, rest []int
	if *pin {
		var was unix.CPUSet
		err := unix.SchedGetaffinity(0, &was)
		if err == nil {
			etcdCPUs, rest, err = pinLayout()
		}
		if err == nil {
			err = pinSelf(rest)
			defer restoreAffinity(was)
		}
		if err != nil {
			fmt.Fprintf(stderr, "coordbench: %v\n", err)
			return 2
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	b := &bench{duration: *duration, observers: *observers, waiters: *waiters, held: *held, watchers: *watchers, readCacheKeys: *readCacheKeys, leases: *leases, sessions: *sessions, sessionWindow: *sessionWindow, waitersTimeout: *waitersTimeout,
		heapProfile: *heapprofile, progressOut: stderr, runID: fmt.Sprintf("%x", time.Now().UnixNano()),
		etcdCPUs: etcdCPUs, restCPUs: rest}
	ownEtcd := *endpoints == ""
	if ownEtcd && *dataDir == "" {
		tmp, err := os.MkdirTemp(tmpfsDir(), "coordbench-etcd")
		if err != nil {
			fmt.Fprintf(stderr, "coordbench: %v\n", err)
			return 1
		}
		defer os.RemoveAll(tmp)
		*dataDir = filepath.Join(tmp, "data")
	}
	if !ownEtcd {
		b.etcdURL = strings.Split(*endpoints, ",")[0]
	}
	if *memLimit != "" {
		proxyEnv = append(proxyEnv, "GOMEMLIMIT="+*memLimit)
	}
	proxyEnv = append(proxyEnv, "COORDBENCH_READ_CACHE_KEYS="+strconv.Itoa(*readCacheKeys))
	if slices.ContainsFunc(chosen, func(s scenario) bool { return s.tenants }) {
		dir, err := os.MkdirTemp("", "coordbench-pki")
		if err == nil {
			defer os.RemoveAll(dir)
			b.pki, err = newTenantPKI(dir, "tenant-a", "tenant-b")
		}
		if err != nil {
			fmt.Fprintf(stderr, "coordbench: %v\n", err)
			return 1
		}
	}
	var uncap []func() // removes the cgroups of -etcd-cpu
	// start starts coordbench's own etcd (unless pointed at one) and a
	// proxy in front of it; suffix names the data directory and the CPU
	// profile of a fresh start.
	start := func(suffix string) error {
		if ownEtcd {
			dir := *dataDir + suffix
			var env []string
			if *etcdProfile != "" {
				env = []string{"COORDBENCH_ETCD_PPROF=1"}
			}
			c, err := startChild(env, roleEtcd, dir)
			if err != nil {
				return fmt.Errorf("etcd: %w", err)
			}
			b.etcd, b.etcdURL = c, c.addr
			if etcdCPUs != nil {
				if err := pinPid(c.cmd.Process.Pid, etcdCPUs); err != nil {
					return err
				}
			}
			fmt.Fprintf(stderr, "etcd %s (data %s)\n", c.addr, dir)
			if *etcdCPU > 0 {
				undo, err := capCPU(c.cmd.Process.Pid, *etcdCPU, "coordbench-"+b.runID+suffix)
				if err != nil {
					fmt.Fprintf(stderr, "coordbench: -etcd-cpu %g: cannot cap etcd's CPU (%v); it runs uncapped\n", *etcdCPU, err)
				} else {
					fmt.Fprintf(stderr, "etcd capped at %g CPU\n", *etcdCPU)
					uncap = append(uncap, undo)
				}
			}
		}
		profile := *cpuprofile
		if profile != "" {
			profile += suffix
		}
		p, err := startChild(proxyEnv, roleProxy, b.etcdURL, profile, strconv.Itoa(*maxEtcdRequests))
		if err != nil {
			return fmt.Errorf("coordproxy: %w", err)
		}
		b.proxy = p
		fmt.Fprintf(stderr, "coordproxy %s\n", p.addr)
		if *withPolicy {
			file := filepath.Join(os.TempDir(), "coordbench-policy-"+b.runID+".yaml")
			if err := os.WriteFile(file, []byte(benchPolicy), 0o644); err != nil {
				return err
			}
			pp, err := startChild(proxyEnv, roleProxy, b.etcdURL, "", strconv.Itoa(*maxEtcdRequests), file)
			if err != nil {
				return fmt.Errorf("coordproxy with a policy: %w", err)
			}
			b.policed = pp
			fmt.Fprintf(stderr, "coordproxy+policy %s\n", pp.addr)
		}
		if *withPeer {
			gp, err := startChild(nil, roleGRPCProxy, b.etcdURL)
			if err != nil {
				return fmt.Errorf("etcd's grpc-proxy: %w", err)
			}
			gp.metrics = "http://" + gp.addr + "/proxy"
			b.peer = gp
			fmt.Fprintf(stderr, "etcd's grpc-proxy %s\n", gp.addr)
		}
		if b.pki != nil {
			tp, err := startChild(append(slices.Clip(proxyEnv), "COORDBENCH_PROXY_TLS="+b.pki.certFile+","+b.pki.keyFile+","+b.pki.caFile),
				roleProxy, b.etcdURL, "", strconv.Itoa(*maxEtcdRequests))
			if err != nil {
				return fmt.Errorf("coordproxy with tenants: %w", err)
			}
			b.tenants = tp
			fmt.Fprintf(stderr, "coordproxy with tenants %s\n", tp.addr)
		}
		b.watchersAtStart, b.watchersAtStartErr = etcdWatchers(ctx, b.etcdURL)
		return nil
	}
	stopAll := func() {
		for _, c := range []*child{b.proxy, b.policed, b.peer, b.tenants, b.etcd} {
			if c != nil {
				c.stop()
			}
		}
		for _, undo := range uncap {
			undo()
		}
		uncap = nil
	}
	defer stopAll()
	if err := start(""); err != nil {
		fmt.Fprintf(stderr, "coordbench: %v\n", err)
		return 1
	}

	var results []result
	for i, s := range chosen {
		if s.freshEtcd && i > 0 {
			if !ownEtcd {
				fmt.Fprintf(stderr, "coordbench: %s runs on the etcd the scenarios before it used (-endpoints): what they left in etcd counts\n", s.id)
			} else {
				stopAll()
				if err := start("." + s.id); err != nil {
					fmt.Fprintf(stderr, "coordbench: %v\n", err)
					return 1
				}
			}
		}
		native, proxied := target{name: "etcd", addr: b.etcdURL}, target{name: "coordproxy", addr: b.proxy.addr}
		if s.tenants {
			proxied = target{name: "coordproxy", addr: b.tenants.addr, tenant: b.pki.clientTLS}
		}
		title := s.title
		switch s.id {
		case "observe":
			title = fmt.Sprintf("Observe fan-out, %d observers", b.observers)
		case "waiters":
			title = fmt.Sprintf("%d %s", b.waiters, s.title)
		case "held":
			title = fmt.Sprintf("%d %s", b.held, s.title)
		case "sessions":
			title = fmt.Sprintf("%d %s", b.sessions, s.title)
		case "watchers", "watchkeys":
			title = fmt.Sprintf("%d %s", b.watchers, s.title)
		case "keepalives":
			title = fmt.Sprintf("%d %s", b.leases, s.title)
		}
		order := []target{native, proxied}
		if s.proxyFirst {
			order = []target{proxied, native}
		}
		if b.policed != nil && !s.freshEtcd && !s.tenants {
			order = append(order, target{name: "coordproxy+policy", addr: b.policed.addr})
		}
		if b.peer != nil && !s.tenants {
			order = append(order, target{name: "grpc-proxy", addr: b.peer.addr})
		}
		for _, t := range order {
			served := b.proxy
			switch {
			case t.name == "coordproxy+policy":
				served = b.policed
			case t.name == "grpc-proxy":
				served = b.peer
			case s.tenants:
				served = b.tenants
			}
			before := b.costNow(ctx, served)
			profiled := b.profileEtcd(ctx, *etcdProfile, s.id, t.name)
			r, err := s.run(ctx, b, t, title)
			profiled()
			if err != nil {
				fmt.Fprintf(stderr, "coordbench: %s on %s: %v\n", title, t.name, err)
				return 1
			}
			if !s.tenants { // its phases are three runs: no one op count
				addCost(&r, before, b.costNow(ctx, served))
			}
			results = append(results, r)
		}
		if ctx.Err() != nil {
			break
		}
	}
	printTables(stdout, results, b.policed != nil, b.peer != nil)
	if *jsonOut != "" {
		out, _ := json.MarshalIndent(results, "", "  ")
		if err := os.WriteFile(*jsonOut, append(out, '\n'), 0o644); err != nil {
			fmt.Fprintf(stderr, "coordbench: %v\n", err)
			return 1
		}
	}
	return 0
}

// benchPolicy allows the anonymous load generator every verb on every key:
// what it costs is the policy's work on calls it allows.
const benchPolicy = `rules:
  - identities: [anonymous]
    prefixes: [""]
    verbs: [lock, elect, read, write, lease, admin]
`

// tmpfsDir is /dev/shm where it is a directory, so that etcd's fsyncs do
// not measure the disk (the figures in the issue were taken on tmpfs); else
// the default temp dir.
func tmpfsDir() string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		return "/dev/shm"
	}
	return ""
}

func scenarioIDs() string {
	var ids []string
	for _, s := range scenarios {
		ids = append(ids, s.id)
	}
	return strings.Join(ids, ",")
}
