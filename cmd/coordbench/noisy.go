package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
)

// The noisy neighbour: tenant A floods; tenant B, one client, does
// Lock+Unlock on a name of its own. Three phases on each target, each for
// the duration: B alone, the flood alone, then both at once. What counts is
// B's latency and rate under the flood against B alone, B's Unlock, the
// sessions B holds through the flood (lost ones), and the flood's rate.
// Through the proxy the tenants are two identities (client certificates);
// natively etcd knows no tenants. Two floods:
//   - noisy: Lock+Unlock from floodClients clients on distinct names;
//   - noisywaiters: -waiters Lock calls parked on one name A holds, then KV
//     Puts from floodClients clients on distinct keys.

const floodClients = 128

// noisySessions is how many sessions B holds through the flood: through
// the proxy coordproxy sessions with the client's 750 ms window (a
// heartbeat every 187.5 ms, lost when none is answered within the window);
// natively concurrency.Session with etcd's shortest practical TTL, 2 s
// (renewed every TTL/3).
const (
	noisySessions   = 32
	noisySessionTTL = 2
)

// tenants are the two tenants' clients and leases.
type tenants struct {
	b      *clientv3.Client
	bLease clientv3.LeaseID
	bName  []byte
	a      []*clientv3.Client
	aLease []clientv3.LeaseID
	close  func()
}

func dialTenants(b *bench, t target) (*tenants, error) {
	tn := &tenants{}
	var clis []*clientv3.Client
	leaseCtx, stopLeases := context.WithCancel(context.Background())
	tn.close = func() {
		revokeAll(tn.b, append([]clientv3.LeaseID{tn.bLease}, tn.aLease...))
		stopLeases()
		for _, c := range clis {
			c.Close()
		}
	}
	dial := func(tenant string) (*clientv3.Client, clientv3.LeaseID, error) {
		c, err := t.dialAs(tenant)
		if err != nil {
			return nil, 0, err
		}
		clis = append(clis, c)
		l, err := grant(leaseCtx, c, 60)
		return c, l, err
	}
	var err error
	if tn.b, tn.bLease, err = dial("tenant-b"); err != nil {
		tn.close()
		return nil, err
	}
	tn.bName = []byte(b.unique("tenant-b"))
	tn.a, tn.aLease = make([]*clientv3.Client, floodClients), make([]clientv3.LeaseID, floodClients)
	for i := range tn.a {
		if tn.a[i], tn.aLease[i], err = dial("tenant-a"); err != nil {
			tn.close()
			return nil, err
		}
	}
	return tn, nil
}

// phase runs B (if withB) and flood (if set) for the duration; B's Lock
// and Unlock latencies and the flood's ops are recorded.
func (tn *tenants) phase(ctx context.Context, b *bench, t target, title, name string, withB bool, flood func(ctx context.Context, rec *recorder)) (bLock, bUnlock, fl *recorder, elapsed time.Duration) {
	bLock, bUnlock, fl = newRecorder(), newRecorder(), newRecorder()
	runCtx, cancel := context.WithTimeout(ctx, b.duration)
	defer cancel()
	var wg sync.WaitGroup
	if withB {
		wg.Go(func() { lockLoop(runCtx, tn.b, tn.bName, tn.bLease, bLock, bUnlock) })
	}
	if flood != nil {
		wg.Go(func() { flood(runCtx, fl) })
	}
	count := bLock.count
	if !withB {
		count = fl.count
	}
	b.progress(runCtx, title+": "+name, t, count)
	wg.Wait()
	return bLock, bUnlock, fl, time.Since(bLock.start)
}

// run runs the three phases with flood, B holding noisySessions sessions
// through the third; setup, if set, runs after B alone (what the flood
// leaves in place for the others, such as parked waiters).
func (tn *tenants) run(ctx context.Context, b *bench, t target, title string, setup func() error, flood func(ctx context.Context, rec *recorder)) (result, error) {
	bAloneLock, bAloneUnlock, _, aloneElapsed := tn.phase(ctx, b, t, title, "B alone", true, nil)
	if setup != nil {
		if err := setup(); err != nil {
			return result{}, err
		}
	}
	_, _, floodAlone, floodElapsed := tn.phase(ctx, b, t, title, "the flood alone", false, flood)
	lost, closeSessions, err := holdSessions(tn.b, t.name == "coordproxy")
	if err != nil {
		return result{}, fmt.Errorf("tenant B's sessions: %w", err)
	}
	bLock, bUnlock, fl, elapsed := tn.phase(ctx, b, t, title, "B under the flood", true, flood)
	lostUnder := lost()
	closeSessions()

	alone := bAloneLock.result(title, t.name, aloneElapsed)
	aloneUnlock := bAloneUnlock.result(title, t.name, aloneElapsed)
	r := bLock.result(title, t.name, elapsed)
	underUnlock := bUnlock.result(title, t.name, elapsed)
	fa := floodAlone.result(title, t.name, floodElapsed)
	f := fl.result(title, t.name, elapsed)
	r.Errors += alone.Errors + fa.Errors + f.Errors
	r.Extra = map[string]any{
		"b_alone_ops":           round1(alone.Ops),
		"b_alone_p99_ms":        alone.P99MS,
		"b_p99_ratio":           round2(r.P99MS / alone.P99MS),
		"b_rate_ratio":          round2(r.Ops / alone.Ops),
		"b_unlock_alone_p99_ms": aloneUnlock.P99MS,
		"b_unlock_p99_ms":       underUnlock.P99MS,
		"b_sessions_lost":       fmt.Sprintf("%d/%d", lostUnder, noisySessions),
		"flood_alone_ops":       round1(fa.Ops),
		"flood_ops":             round1(f.Ops),
		"flood_p99_ms":          f.P99MS,
	}
	return r, nil
}

// holdSessions opens noisySessions sessions on cli; lost is how many have
// ended since.
func holdSessions(cli *clientv3.Client, proxied bool) (lost func() int, closeAll func(), err error) {
	var closers []func()
	var dones []<-chan struct{}
	closeAll = func() {
		for _, c := range closers {
			c()
		}
	}
	for range noisySessions {
		closer, done, _, err := openSession(cli, proxied, 750*time.Millisecond, noisySessionTTL)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		closers, dones = append(closers, closer), append(dones, done)
	}
	lost = func() int {
		n := 0
		for _, d := range dones {
			select {
			case <-d:
				n++
			default:
			}
		}
		return n
	}
	return lost, closeAll, nil
}

// noisyScenario: the flood is Lock+Unlock from floodClients clients.
func noisyScenario(ctx context.Context, b *bench, t target, title string) (result, error) {
	tn, err := dialTenants(b, t)
	if err != nil {
		return result{}, err
	}
	defer tn.close()
	aNames := make([][]byte, floodClients)
	for i := range aNames {
		aNames[i] = []byte(b.unique(fmt.Sprintf("tenant-a-%d", i)))
	}
	return tn.run(ctx, b, t, title, nil, func(ctx context.Context, rec *recorder) {
		var wg sync.WaitGroup
		for i := range tn.a {
			wg.Go(func() { lockLoop(ctx, tn.a[i], aNames[i], tn.aLease[i], rec, nil) })
		}
		wg.Wait()
	})
}

// noisyWaitersScenario: the flood is -waiters Lock calls of A parked on a
// name A holds, then KV Puts from floodClients clients of A.
func noisyWaitersScenario(ctx context.Context, b *bench, t target, title string) (result, error) {
	tn, err := dialTenants(b, t)
	if err != nil {
		return result{}, err
	}
	defer tn.close()
	name := []byte(b.unique("tenant-a-waiters"))
	waitCtx, stopWaiters := context.WithCancel(ctx)
	var waiting sync.WaitGroup
	defer func() {
		stopWaiters()
		waiting.Wait()
	}()
	var parkedKeys, refused int64
	var leases []clientv3.LeaseID
	defer func() { revokeAll(tn.a[0], leases) }()
	park := func() error {
		locks := v3lockpb.NewLockClient(tn.a[0].ActiveConnection())
		if _, err := locks.Lock(ctx, &v3lockpb.LockRequest{Name: name, Lease: int64(tn.aLease[0])}); err != nil {
			return fmt.Errorf("holder: %w", err)
		}
		// A lease per waiter (a waiter's key is name/<lease hex>).
		leases = make([]clientv3.LeaseID, b.waiters)
		if err := grantAll(leases, func(i int) (clientv3.LeaseID, error) { return grant(ctx, tn.a[i%len(tn.a)], 600) }); err != nil {
			return fmt.Errorf("the waiters: %w", err)
		}
		deadline := time.Now().Add(b.waitersTimeout)
		var errs atomic.Int64
		for i := range b.waiters {
			waiting.Go(func() {
				locks := v3lockpb.NewLockClient(tn.a[i%len(tn.a)].ActiveConnection())
				_, err := locks.Lock(waitCtx, &v3lockpb.LockRequest{Name: name, Lease: int64(leases[i])})
				if err != nil && waitCtx.Err() == nil {
					errs.Add(1)
				}
			})
		}
		// Parked: every waiter's key is in etcd, or refused (etcd's own
		// Lock service answers many "too many requests").
		for time.Now().Before(deadline) {
			r, err := tn.b.Get(ctx, string(name)+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
			if err == nil && r.Count-1+errs.Load() >= int64(b.waiters) {
				parkedKeys = r.Count - 1
				refused = errs.Load()
				return nil
			}
			time.Sleep(100 * time.Millisecond)
		}
		return errors.New("the waiters did not park within -waiters-timeout")
	}
	value := make([]byte, 100)
	r, err := tn.run(ctx, b, t, title, park, func(ctx context.Context, rec *recorder) {
		var wg sync.WaitGroup
		for i := range tn.a {
			key := b.unique(fmt.Sprintf("tenant-a-kv-%d", i))
			wg.Go(func() {
				for ctx.Err() == nil {
					start := time.Now()
					if _, err := tn.a[i].Put(ctx, key, string(value)); err != nil {
						if ctx.Err() == nil {
							rec.errors.Add(1)
						}
						continue
					}
					rec.add(time.Since(start))
				}
			})
		}
		wg.Wait()
	})
	if err == nil {
		r.Extra["waiters_parked"] = parkedKeys
		r.Extra["waiters_refused"] = refused
	}
	return r, err
}
