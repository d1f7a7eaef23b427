package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"go.uber.org/zap"
)

// scenario is one row of the table.
type scenario struct {
	id, title string
	run       func(ctx context.Context, b *bench, t target, title string) (result, error)
	// proxyFirst runs the proxy before etcd's own service, so that the
	// memory etcd keeps after the native run does not count against the
	// proxy.
	proxyFirst bool
	// freshEtcd runs the scenario on a new etcd and proxy (when coordbench
	// starts etcd itself): what earlier scenarios did to etcd must not
	// count. In etcd 3.7.3 native Observe streams that fell behind and were
	// cancelled can leave their watchers behind and wedge etcd's own watch
	// stream, after which native Lock waiters are never woken; 10 000
	// native waiters leave etcd with a gigabyte more and its watch stream
	// behind too (docs/benchmarks.md, "Native etcd after a scenario").
	freshEtcd bool
	// tenants runs the proxy target through a proxy that tells tenants
	// apart by their client certificates (b.tenants) rather than b.proxy.
	tenants bool
}

// target is where a scenario sends its calls: etcd's own services or the
// proxy in front of the same etcd.
type target struct {
	name string // "etcd" or "coordproxy"
	addr string
	// tenant, if set, is the TLS configuration of a tenant's clients (the
	// noisy-neighbour scenario's proxy asks for client certificates).
	tenant func(name string) *tls.Config
}

func (t target) dial() (*clientv3.Client, error) { return t.dialAs("") }

// dialAs dials as tenant (its client certificate, where the target tells
// tenants apart).
func (t target) dialAs(tenant string) (*clientv3.Client, error) {
	cfg := clientv3.Config{
		Endpoints: []string{t.addr}, DialTimeout: 10 * time.Second, Logger: zap.NewNop(),
		MaxCallRecvMsgSize: 16 << 20,
	}
	if t.tenant != nil {
		cfg.TLS = t.tenant(tenant)
	}
	return clientv3.New(cfg)
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

// keptLease grants a lease of ttl seconds on cli and keeps it alive until
// release, which revokes it.
func keptLease(cli *clientv3.Client, ttl int64) (lease clientv3.LeaseID, release func(), err error) {
	ctx, stop := context.WithCancel(context.Background())
	if lease, err = grant(ctx, cli, ttl); err != nil {
		stop()
		return 0, nil, err
	}
	return lease, func() {
		revokeAll(cli, []clientv3.LeaseID{lease})
		stop()
	}, nil
}

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

// grantAll fills leases with grant(i) for each index, 64 at a time; the
// first error stops it.
func grantAll(leases []clientv3.LeaseID, grant func(i int) (clientv3.LeaseID, error)) error {
	var next atomic.Int64
	var grantErr atomic.Value
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(leases); i = int(next.Add(1) - 1) {
				l, err := grant(i)
				if err != nil {
					grantErr.Store(err)
					return
				}
				leases[i] = l
			}
		})
	}
	wg.Wait()
	if err, ok := grantErr.Load().(error); ok {
		return fmt.Errorf("granting leases: %w", err)
	}
	return nil
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
		wg.Go(func() { lockLoop(runCtx, c, unique[i%len(unique)], leases[i], rec, nil) })
	}
	b.progress(runCtx, scenario, t, rec.count)
	wg.Wait()
	return rec.result(scenario, t.name, time.Since(rec.start)), nil
}

// lockLoop locks and unlocks name on cli with lease until ctx ends,
// timing each Lock in lock and each Unlock in unlock (nil: not timed).
func lockLoop(ctx context.Context, cli *clientv3.Client, name []byte, lease clientv3.LeaseID, lock, unlock *recorder) {
	locks := v3lockpb.NewLockClient(cli.ActiveConnection())
	for ctx.Err() == nil {
		start := time.Now()
		r, err := locks.Lock(ctx, &v3lockpb.LockRequest{Name: name, Lease: int64(lease)})
		if err != nil {
			if ctx.Err() == nil {
				lock.errors.Add(1)
			}
			continue
		}
		lock.add(time.Since(start))
		uctx, ucancel := context.WithTimeout(context.Background(), 10*time.Second)
		start = time.Now()
		_, err = locks.Unlock(uctx, &v3lockpb.UnlockRequest{Key: r.Key})
		ucancel()
		switch {
		case err != nil:
			lock.errors.Add(1)
		case unlock != nil:
			unlock.add(time.Since(start))
		}
	}
}

// campaignScenario: one candidate campaigns, proclaims and resigns in a loop;
// the latency is the whole cycle's.
func campaignScenario(ctx context.Context, b *bench, t target, scenario string) (result, error) {
	cli, err := t.dial()
	if err != nil {
		return result{}, err
	}
	defer cli.Close()
	lease, release, err := keptLease(cli, 60)
	if err != nil {
		return result{}, err
	}
	defer release()
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
		n, err := etcdWatchers(ctx, b.etcdURL)
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

// footprint is what the state a scenario builds costs: etcd's watchers and
// both processes' RSS (0 where unknown), read before and after it.
type footprint struct {
	watchers          float64
	watchersErr       error
	etcdRSS, proxyRSS int64
}

func (b *bench) footprintNow(ctx context.Context) footprint {
	var f footprint
	f.watchers, f.watchersErr = etcdWatchers(ctx, b.etcdURL)
	if v, err := b.etcdRSS(); err == nil {
		f.etcdRSS = v
	}
	if v, err := b.proxyRSS(); err == nil {
		f.proxyRSS = v
	}
	return f
}

// grown puts into extra what grew from f to now: etcd's watchers, etcd's
// RSS, and on the proxy's target the proxy's RSS.
func (f footprint) grown(now footprint, t target, extra map[string]any) {
	extra["etcd_watchers_added"] = added(f.watchers, f.watchersErr, now.watchers, now.watchersErr)
	if f.etcdRSS > 0 && now.etcdRSS > 0 {
		extra["etcd_rss_growth_mib"] = mib(now.etcdRSS - f.etcdRSS)
	}
	if t.name == "coordproxy" && f.proxyRSS > 0 && now.proxyRSS > 0 {
		extra["proxy_rss_growth_mib"] = mib(now.proxyRSS - f.proxyRSS)
	}
}

// inParallel makes n calls, call(w, i) for every i in [0, n), on 64
// workers w taking the next i in turn, until ctx ends: each call timed in
// a recorder, with a progress line. The result's Extra holds the first
// error, if any.
func (b *bench) inParallel(ctx context.Context, scenario string, t target, n int, call func(w, i int) error) result {
	rec := newRecorder()
	var next atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	pctx, stopProgress := context.WithCancel(ctx)
	go b.progress(pctx, scenario, t, rec.count)
	for w := range 64 {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				start := time.Now()
				if err := call(w, i); err != nil {
					rec.errors.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				rec.add(time.Since(start))
			}
		})
	}
	wg.Wait()
	stopProgress()
	res := rec.result(scenario, t.name, time.Since(rec.start))
	res.Extra = map[string]any{}
	if e := firstErr.Load(); e != nil {
		res.Extra["first_error"] = e
	}
	return res
}
