package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
)

// waitersScenario: one client holds a lock and n others, each with its own
// lease, call Lock on it and wait. It measures how long parking them all
// takes, the errors, etcd's watchers and both processes' memory.
func waitersScenario(ctx context.Context, b *bench, t target, scenario string) (result, error) {
	clis, closeAll, err := t.clients(32)
	if err != nil {
		return result{}, err
	}
	defer closeAll()
	kv, err := target{addr: b.etcdURL}.dial()
	if err != nil {
		return result{}, err
	}
	defer kv.Close()

	name := b.unique("waiters")
	b.settleWatchers(ctx, scenario, t)
	before := b.footprintNow(ctx)

	n := b.waiters
	leases := make([]clientv3.LeaseID, n+1)
	if err := grantAll(leases, func(i int) (clientv3.LeaseID, error) {
		g, err := clis[i%len(clis)].Grant(ctx, 600)
		if err != nil {
			return 0, err
		}
		return g.ID, nil
	}); err != nil {
		return result{}, err
	}
	defer revokeAll(kv, leases)

	locks := make([]v3lockpb.LockClient, len(clis))
	for i, c := range clis {
		locks[i] = v3lockpb.NewLockClient(c.ActiveConnection())
	}
	if _, err := locks[0].Lock(ctx, &v3lockpb.LockRequest{Name: []byte(name), Lease: int64(leases[n])}); err != nil {
		return result{}, fmt.Errorf("holder: %w", err)
	}

	waitCtx, stopWaiters := context.WithCancel(ctx)
	defer stopWaiters()
	var errs atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		wg.Go(func() {
			_, err := locks[i%len(locks)].Lock(waitCtx, &v3lockpb.LockRequest{Name: []byte(name), Lease: int64(leases[i])})
			if err != nil && waitCtx.Err() == nil {
				errs.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
			}
		})
	}
	parked := func() int {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		r, err := kv.Get(cctx, name+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return -1
		}
		return int(r.Count) - 1
	}
	var got int
	deadline := time.Now().Add(b.waitersTimeout)
	pctx, stopProgress := context.WithCancel(ctx)
	go b.progress(pctx, scenario, t, func() int { return got })
	for time.Now().Before(deadline) {
		got = parked()
		if got >= n || got+int(errs.Load()) >= n {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	stopProgress()
	parkTime := time.Since(start)
	// Let the waiters settle, then measure.
	time.Sleep(time.Second)
	got = parked()
	now := b.footprintNow(ctx)
	var mem map[string]int64
	if t.name == "coordproxy" {
		mem, _ = memStats(ctx, t.addr)
		if b.heapProfile != "" {
			if err := saveHeapProfile(ctx, t.addr, b.heapProfile); err != nil {
				fmt.Fprintf(b.progressOut, "coordbench: proxy heap profile: %v\n", err)
			}
		}
	}

	stopWaiters()
	wg.Wait()
	res := result{Scenario: scenario, Target: t.name, Count: got, Errors: int(errs.Load())}
	if got > 0 {
		res.Ops = float64(got) / parkTime.Seconds()
	}
	res.Extra = map[string]any{
		"waiters":         n,
		"parked":          got,
		"seconds_to_park": parkTime.Seconds(),
		// Added can be off by the proxy's lingering watches of earlier
		// scenarios that expire meanwhile; the total bounds it from above.
		"etcd_watchers_total": added(0, nil, now.watchers, now.watchersErr),
		"etcd_rss_mib":        mib(now.etcdRSS),
		"proxy_rss_mib":       mib(now.proxyRSS),
	}
	before.grown(now, t, res.Extra)
	if mem != nil {
		// Where the proxy's RSS is, from its runtime.MemStats.
		res.Extra["proxy_stack_mib"] = mib(mem["StackInuse"])
		res.Extra["proxy_heap_inuse_mib"] = mib(mem["HeapInuse"])
		res.Extra["proxy_heap_idle_kept_mib"] = mib(mem["HeapIdle"] - mem["HeapReleased"])
	}
	if e, ok := firstErr.Load().(string); ok {
		res.Extra["first_error"] = e
	}
	return res, nil
}

// memStats reads the runtime.MemStats a Go process serves at the end of
// /debug/pprof/heap?debug=1 ("# HeapInuse = 123", "# Stack = 45 / 67" lines).
func memStats(ctx context.Context, addr string) (map[string]int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/debug/pprof/heap?debug=1", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	m := map[string]int64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(strings.TrimPrefix(sc.Text(), "# "), " = ")
		if !ok {
			continue
		}
		if name == "Stack" { // "# Stack = StackInuse / StackSys"
			inuse, _, _ := strings.Cut(val, " / ")
			name, val = "StackInuse", inuse
		}
		if n, err := strconv.ParseInt(val, 10, 64); err == nil {
			m[name] = n
		}
	}
	if len(m) == 0 {
		return nil, fmt.Errorf("no runtime.MemStats at %s", req.URL)
	}
	return m, sc.Err()
}

// saveHeapProfile writes the heap profile a Go process serves at
// /debug/pprof/heap (the binary form, for go tool pprof) to file, after a
// collection so that it shows what is live now.
func saveHeapProfile(ctx context.Context, addr, file string) error {
	return saveURL(ctx, "http://"+addr+"/debug/pprof/heap?gc=1", file)
}

// saveURL writes what a GET of url answers to file.
func saveURL(ctx context.Context, url, file string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", req.URL, resp.Status)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func mib(b int64) float64 { return float64(b*10/(1<<20)) / 10 }

// revokeAll revokes leases, many at a time, on a fresh context.
func revokeAll(cli *clientv3.Client, leases []clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(64, len(leases)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(leases) {
					return
				}
				if leases[i] != 0 {
					cli.Revoke(ctx, leases[i])
				}
			}
		})
	}
	wg.Wait()
}
