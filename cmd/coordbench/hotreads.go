package main

import (
	"context"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// hotReadsScenario: 64 clients reading one key serializably, as fast as
// they can, while nobody writes it. etcd's grpc-proxy answers them from
// its cache; coordproxy from its read cache when the proxy runs with one
// (-read-cache-keys, passed to the proxy as --read-cache-keys); etcd
// natively serves each. The cost columns say what a read costs etcd.
func hotReadsScenario(ctx context.Context, b *bench, t target, scenario string) (result, error) {
	clis, closeAll, err := t.clients(64)
	if err != nil {
		return result{}, err
	}
	defer closeAll()
	key := b.unique("hot")
	if _, err := clis[0].Put(ctx, key, "value"); err != nil {
		return result{}, err
	}
	rec := newRecorder()
	runCtx, cancel := context.WithTimeout(ctx, b.duration)
	defer cancel()
	go b.progress(runCtx, scenario, t, rec.count)
	var wg sync.WaitGroup
	for _, cli := range clis {
		wg.Go(func() {
			for runCtx.Err() == nil {
				start := time.Now()
				if _, err := cli.Get(runCtx, key, clientv3.WithSerializable()); err != nil {
					if runCtx.Err() == nil {
						rec.errors.Add(1)
					}
					continue
				}
				rec.add(time.Since(start))
			}
		})
	}
	wg.Wait()
	res := rec.result(scenario, t.name, time.Since(rec.start))
	res.Extra = map[string]any{"read_cache_keys": b.readCacheKeys}
	return res, nil
}
