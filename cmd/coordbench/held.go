package main

import (
	"context"
	"fmt"

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
	locks := make([]v3lockpb.LockClient, 64)
	for w := range locks {
		locks[w] = v3lockpb.NewLockClient(clis[w%len(clis)].ActiveConnection())
	}
	res := b.inParallel(ctx, scenario, t, b.held, func(w, i int) error {
		_, err := locks[w].Lock(ctx, &v3lockpb.LockRequest{Name: fmt.Appendf(nil, "%s/%d", prefix, i), Lease: int64(lease)})
		return err
	})
	before.grown(b.footprintNow(ctx), t, res.Extra)
	return res, nil
}
