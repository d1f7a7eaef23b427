package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
)

// heldScenario: one lease takes b.held distinct locks, 64 Lock calls at a
// time, and keeps them all: a fleet that holds a lock per resource. Ops is
// locks taken per second; the notes give what holding them costs etcd
// (watchers) and each process (RSS growth).
func heldScenario(ctx context.Context, b *bench, t target, scenario string) (result, error) {
	clis, closeAll, err := t.clients(8)
	if err != nil {
		return result{}, err
	}
	defer closeAll()
	lease, release, err := keptLease(clis[0], 600)
	if err != nil {
		return result{}, err
	}
	defer release()

	b.settleWatchers(ctx, scenario, t)
	before := b.footprintNow(ctx)

	prefix := b.unique("held")
	rec := newRecorder()
	var next atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	pctx, stopProgress := context.WithCancel(ctx)
	go b.progress(pctx, scenario, t, rec.count)
	for w := range 64 {
		locks := v3lockpb.NewLockClient(clis[w%len(clis)].ActiveConnection())
		wg.Go(func() {
			for ctx.Err() == nil {
				i := next.Add(1) - 1
				if i >= int64(b.held) {
					return
				}
				start := time.Now()
				_, err := locks.Lock(ctx, &v3lockpb.LockRequest{Name: fmt.Appendf(nil, "%s/%d", prefix, i), Lease: int64(lease)})
				if err != nil {
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
	before.grown(b.footprintNow(ctx), t, res.Extra)
	return res, nil
}
