package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"go.uber.org/zap"
)

// target is where a scenario sends its calls: etcd's own services or the
// proxy in front of the same etcd.
type target struct {
	name string // "etcd" or "coordproxy"
	addr string
}

func (t target) dial() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints: []string{t.addr}, DialTimeout: 10 * time.Second, Logger: zap.NewNop(),
		MaxCallRecvMsgSize: 16 << 20,
	})
}

// clients dials n connections; close releases them.
func (t target) clients(n int) (clis []*clientv3.Client, close func(), err error) {
	close = func() {
		for _, c := range clis {
			c.Close()
		}
	}
	for range n {
		c, err := t.dial()
		if err != nil {
			close()
			return nil, nil, err
		}
		clis = append(clis, c)
	}
	return clis, close, nil
}

// result is one scenario on one target.
type result struct {
	Scenario string         `json:"scenario"`
	Target   string         `json:"target"`
	Ops      float64        `json:"ops_per_sec"`
	P50MS    float64        `json:"p50_ms"`
	P99MS    float64        `json:"p99_ms"`
	MaxMS    float64        `json:"max_ms"`
	Count    int            `json:"count"`
	Errors   int            `json:"errors"`
	Extra    map[string]any `json:"extra,omitempty"`
}

// recorder collects latencies from many goroutines.
type recorder struct {
	mu     sync.Mutex
	lat    []time.Duration
	errors atomic.Int64
	start  time.Time
}

func newRecorder() *recorder { return &recorder{start: time.Now()} }

func (r *recorder) add(d time.Duration) {
	r.mu.Lock()
	r.lat = append(r.lat, d)
	r.mu.Unlock()
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.lat)
}

func (r *recorder) result(scenario, tgt string, elapsed time.Duration) result {
	r.mu.Lock()
	defer r.mu.Unlock()
	res := result{Scenario: scenario, Target: tgt, Count: len(r.lat), Errors: int(r.errors.Load())}
	if elapsed > 0 {
		res.Ops = float64(len(r.lat)) / elapsed.Seconds()
	}
	if len(r.lat) > 0 {
		s := slices.Clone(r.lat)
		slices.Sort(s)
		res.P50MS = ms(s[len(s)/2])
		res.P99MS = ms(s[min(len(s)-1, len(s)*99/100)])
		res.MaxMS = ms(s[len(s)-1])
	}
	return res
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// grant grants a lease of ttl seconds and keeps it alive until ctx ends.
func grant(ctx context.Context, cli *clientv3.Client, ttl int64) (clientv3.LeaseID, error) {
	g, err := cli.Grant(ctx, ttl)
	if err != nil {
		return 0, err
	}
	ka, err := cli.KeepAlive(ctx, g.ID)
	if err != nil {
		return 0, err
	}
	go func() {
		for range ka {
		}
	}()
	return g.ID, nil
}

// lockScenario: clients goroutines, each with its own connection and lease,
// lock and unlock names[i % len(names)] until the duration is over. The
// latency is the Lock call's: the time to acquire.
func lockScenario(ctx context.Context, b *bench, t target, scenario string, clients int, names []string) (result, error) {
	clis, closeAll, err := t.clients(clients)
	if err != nil {
		return result{}, err
	}
	defer closeAll()
	leaseCtx, stopLeases := context.WithCancel(context.Background())
	defer stopLeases()
	leases := make([]clientv3.LeaseID, clients)
	for i, c := range clis {
		if leases[i], err = grant(leaseCtx, c, 60); err != nil {
			return result{}, err
		}
	}
	defer revokeAll(clis[0], leases)

	unique := make([][]byte, len(names))
	for i, n := range names {
		unique[i] = []byte(b.unique(n))
	}
	rec := newRecorder()
	runCtx, cancel := context.WithTimeout(ctx, b.duration)
	defer cancel()
	var wg sync.WaitGroup
	for i, c := range clis {
		wg.Go(func() {
			locks := v3lockpb.NewLockClient(c.ActiveConnection())
			name := unique[i%len(unique)]
			for runCtx.Err() == nil {
				start := time.Now()
				r, err := locks.Lock(runCtx, &v3lockpb.LockRequest{Name: name, Lease: int64(leases[i])})
				if err != nil {
					if runCtx.Err() == nil {
						rec.errors.Add(1)
					}
					continue
				}
				rec.add(time.Since(start))
				uctx, ucancel := context.WithTimeout(context.Background(), 10*time.Second)
				if _, err := locks.Unlock(uctx, &v3lockpb.UnlockRequest{Key: r.Key}); err != nil {
					rec.errors.Add(1)
				}
				ucancel()
			}
		})
	}
	b.progress(runCtx, scenario, t, rec.count)
	wg.Wait()
	return rec.result(scenario, t.name, time.Since(rec.start)), nil
}

// campaignScenario: one candidate campaigns, proclaims and resigns in a loop;
// the latency is the whole cycle's.
func campaignScenario(ctx context.Context, b *bench, t target, scenario string) (result, error) {
	cli, err := t.dial()
	if err != nil {
		return result{}, err
	}
	defer cli.Close()
	leaseCtx, stopLease := context.WithCancel(context.Background())
	defer stopLease()
	lease, err := grant(leaseCtx, cli, 60)
	if err != nil {
		return result{}, err
	}
	defer revokeAll(cli, []clientv3.LeaseID{lease})
	elec := epb.NewElectionClient(cli.ActiveConnection())
	name := []byte(b.unique("campaign"))
	rec := newRecorder()
	runCtx, cancel := context.WithTimeout(ctx, b.duration)
	defer cancel()
	go b.progress(runCtx, scenario, t, rec.count)
	for runCtx.Err() == nil {
		start := time.Now()
		c, err := elec.Campaign(runCtx, &epb.CampaignRequest{Name: name, Lease: int64(lease), Value: []byte("a")})
		if err == nil {
			_, err = elec.Proclaim(runCtx, &epb.ProclaimRequest{Leader: c.Leader, Value: []byte("b")})
			if err == nil {
				_, err = elec.Resign(runCtx, &epb.ResignRequest{Leader: c.Leader})
			}
		}
		if err != nil {
			if runCtx.Err() == nil {
				rec.errors.Add(1)
			}
			continue
		}
		rec.add(time.Since(start))
	}
	return rec.result(scenario, t.name, time.Since(rec.start)), nil
}

// hopScenario: one client puts and deletes a key in a loop, on etcd's KV
// service directly and through the proxy's KV pass-through: two requests
// per cycle, as Lock+Unlock, with no lock logic, so that its ratio is what
// the extra gRPC hop alone costs on this machine.
func hopScenario(ctx context.Context, b *bench, t target, scenario string) (result, error) {
	cli, err := t.dial()
	if err != nil {
		return result{}, err
	}
	defer cli.Close()
	key := b.unique("hop")
	rec := newRecorder()
	runCtx, cancel := context.WithTimeout(ctx, b.duration)
	defer cancel()
	go b.progress(runCtx, scenario, t, rec.count)
	for runCtx.Err() == nil {
		start := time.Now()
		_, err := cli.Put(runCtx, key, "v")
		if err == nil {
			_, err = cli.Delete(runCtx, key)
		}
		if err != nil {
			if runCtx.Err() == nil {
				rec.errors.Add(1)
			}
			continue
		}
		rec.add(time.Since(start))
	}
	return rec.result(scenario, t.name, time.Since(rec.start)), nil
}

// observeScenario: observers watch one election; the leader proclaims
// 1, 2, 3, … and each proclaim waits until every observer has seen it (or a
// later value) before the next. Ops is proclaims fully delivered per second;
// the latency is each observer's, from the Proclaim call to its receipt.
func observeScenario(ctx context.Context, b *bench, t target, scenario string) (result, error) {
	clis, closeAll, err := t.clients(8)
	if err != nil {
		return result{}, err
	}
	defer closeAll()
	leaseCtx, stopLease := context.WithCancel(context.Background())
	defer stopLease()
	lease, err := grant(leaseCtx, clis[0], 60)
	if err != nil {
		return result{}, err
	}
	defer revokeAll(clis[0], []clientv3.LeaseID{lease})
	name := []byte(b.unique("observe"))
	elec := epb.NewElectionClient(clis[0].ActiveConnection())
	watchers0, werr0 := etcdMetric(ctx, b.etcdURL, watcherMetric)
	c, err := elec.Campaign(ctx, &epb.CampaignRequest{Name: name, Lease: int64(lease), Value: []byte("0")})
	if err != nil {
		return result{}, err
	}

	var (
		mu      sync.Mutex
		cond    = sync.NewCond(&mu)
		want    int64 // the value being delivered
		sent    time.Time
		pending int
		seen    = make([]int64, b.observers)
	)
	rec := newRecorder()
	obsCtx, stopObs := context.WithCancel(ctx)
	defer stopObs()
	var wg sync.WaitGroup
	var obsErr atomic.Int64
	for i := range b.observers {
		s, err := epb.NewElectionClient(clis[i%len(clis)].ActiveConnection()).Observe(obsCtx, &epb.LeaderRequest{Name: name})
		if err != nil {
			return result{}, err
		}
		seen[i] = -1
		wg.Go(func() {
			for {
				r, err := s.Recv()
				if err != nil {
					if obsCtx.Err() == nil {
						obsErr.Add(1)
					}
					mu.Lock()
					seen[i] = 1 << 62 // gone: never waited for again
					cond.Broadcast()
					mu.Unlock()
					return
				}
				v, _ := strconv.ParseInt(string(r.Kv.Value), 10, 64)
				mu.Lock()
				if v > seen[i] {
					// want 0 is the current leader every observer gets
					// first: no Proclaim to time.
					if want > 0 && seen[i] < want && v >= want {
						rec.add(time.Since(sent))
						pending--
					}
					seen[i] = v
					cond.Broadcast()
				}
				mu.Unlock()
			}
		})
	}
	// Every observer first receives the current leader.
	mu.Lock()
	for !allSeen(seen, 0) {
		cond.Wait()
	}
	mu.Unlock()
	watchers, werr := etcdMetric(ctx, b.etcdURL, watcherMetric)

	runCtx, cancel := context.WithTimeout(ctx, b.duration)
	defer cancel()
	var delivered atomic.Int64
	go b.progress(runCtx, scenario, t, func() int { return int(delivered.Load()) })
	start := time.Now()
	undelivered := 0
	for v := int64(1); runCtx.Err() == nil; v++ {
		mu.Lock()
		want, sent, pending = v, time.Now(), 0
		for _, s := range seen {
			if s < v {
				pending++
			}
		}
		mu.Unlock()
		if _, err := elec.Proclaim(runCtx, &epb.ProclaimRequest{Leader: c.Leader, Value: []byte(strconv.FormatInt(v, 10))}); err != nil {
			if runCtx.Err() == nil {
				rec.errors.Add(1)
			}
			continue
		}
		// Wait for every observer, at most 5 s.
		deadline := time.AfterFunc(5*time.Second, func() { mu.Lock(); cond.Broadcast(); mu.Unlock() })
		mu.Lock()
		for !allSeen(seen, v) && time.Since(sent) < 5*time.Second {
			cond.Wait()
		}
		ok := allSeen(seen, v)
		mu.Unlock()
		deadline.Stop()
		if ok {
			delivered.Add(1)
		} else {
			undelivered++
		}
	}
	elapsed := time.Since(start)
	stopObs()
	wg.Wait()
	res := rec.result(scenario, t.name, 0)
	res.Ops = float64(delivered.Load()) / elapsed.Seconds()
	res.Count = int(delivered.Load())
	res.Errors += int(obsErr.Load())
	res.Extra = map[string]any{
		"observers":             b.observers,
		"proclaims_undelivered": undelivered,
		"etcd_watchers_added":   added(watchers0, werr0, watchers, werr),
	}
	return res, nil
}

const watcherMetric = "etcd_debugging_mvcc_watcher_total"

// settleWatchers waits, for up to 45 s, until etcd has no more watchers than
// when it and the proxy were started: the watches of earlier runs on it (the
// clients' closed streams, the proxy's queue watches, which it keeps 30 s
// after their last use) would otherwise end during this one and blur its
// count.
func (b *bench) settleWatchers(ctx context.Context, scenario string, t target) {
	if b.watchersAtStartErr != nil {
		return
	}
	deadline := time.Now().Add(45 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		n, err := etcdMetric(ctx, b.etcdURL, watcherMetric)
		if err != nil || n <= b.watchersAtStart {
			return
		}
		fmt.Fprintf(b.progressOut, "\r%s on %s: waiting for %v earlier etcd watchers to end   ", scenario, t.name, n-b.watchersAtStart)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// added is after-before, or the error that kept one of them from being read.
func added(before float64, berr error, after float64, aerr error) any {
	if err := errors.Join(berr, aerr); err != nil {
		return "unknown: " + err.Error()
	}
	return after - before
}

func allSeen(seen []int64, v int64) bool {
	for _, s := range seen {
		if s < v {
			return false
		}
	}
	return true
}

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
	etcdRSS0, _ := b.etcdRSS()
	proxyRSS0, _ := b.proxyRSS()
	watchers0, werr0 := etcdMetric(ctx, b.etcdURL, watcherMetric)

	n := b.waiters
	leases := make([]clientv3.LeaseID, n+1)
	var grantErr atomic.Value
	var wg sync.WaitGroup
	var next atomic.Int64
	for w := range 64 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i > n {
					return
				}
				g, err := clis[w%len(clis)].Grant(ctx, 600)
				if err != nil {
					grantErr.Store(err)
					return
				}
				leases[i] = g.ID
			}
		})
	}
	wg.Wait()
	if err, ok := grantErr.Load().(error); ok {
		return result{}, fmt.Errorf("granting leases: %w", err)
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
	watchers, werr := etcdMetric(ctx, b.etcdURL, watcherMetric)
	etcdRSS, _ := b.etcdRSS()
	proxyRSS, _ := b.proxyRSS()
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
		"waiters":             n,
		"parked":              got,
		"seconds_to_park":     parkTime.Seconds(),
		"etcd_watchers_added": added(watchers0, werr0, watchers, werr),
		// Added can be off by the proxy's lingering watches of earlier
		// scenarios that expire meanwhile; the total bounds it from above.
		"etcd_watchers_total":  added(0, nil, watchers, werr),
		"etcd_rss_growth_mib":  mib(etcdRSS - etcdRSS0),
		"etcd_rss_mib":         mib(etcdRSS),
		"proxy_rss_mib":        mib(proxyRSS),
		"proxy_rss_growth_mib": mib(proxyRSS - proxyRSS0),
	}
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
			name, val, _ = strings.Cut(val, " / ")
			name, val = "StackInuse", name
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
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/debug/pprof/heap?gc=1", nil)
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
