package main

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// watchersScenario: -watchers KV watchers of one prefix (over 32
// connections, etcd's clients sharing a Watch stream per connection), one
// writer putting keys under it; each put waits until every watcher has
// received it before the next. Ops is puts fully delivered per second; the
// latency is each watcher's, from the put's answer to its receipt. The
// notes give etcd's watchers for them (natively one each; etcd's
// grpc-proxy coalesces watchers of one range into one) and what was not
// delivered in order: each watcher must receive every put's event, in
// the order of the revisions etcd gave the puts.
func watchersScenario(ctx context.Context, b *bench, t target, scenario string) (result, error) {
	return watchScenario(ctx, b, t, scenario, false)
}

// watchKeysScenario: the same with each watcher on a key of its own, the
// writer putting each key in turn and waiting for its one watcher. Shared
// watches cannot save etcd anything here (one etcd watch per key, as
// natively and through grpc-proxy): the figures show what sharing costs.
func watchKeysScenario(ctx context.Context, b *bench, t target, scenario string) (result, error) {
	return watchScenario(ctx, b, t, scenario, true)
}

func watchScenario(ctx context.Context, b *bench, t target, scenario string, distinct bool) (result, error) {
	clis, closeAll, err := t.clients(32)
	if err != nil {
		return result{}, err
	}
	defer closeAll()
	b.settleWatchers(ctx, scenario, t)
	prefix := b.unique("watchers") + "/"
	before := b.footprintNow(ctx)

	var (
		mu   sync.Mutex
		cond = sync.NewCond(&mu)
		seen = make([]int64, b.watchers) // each watcher's last revision
		got  = make([]int, b.watchers)   // and how many events it received
		sent time.Time
		want int64
	)
	rec := newRecorder()
	var misordered atomic.Int64
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	for i := range b.watchers {
		key, opts := prefix, []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithCreatedNotify()}
		if distinct {
			key, opts = prefix+strconv.Itoa(i), opts[1:]
		}
		ch := clis[i%len(clis)].Watch(clientv3.WithRequireLeader(wctx), key, opts...)
		created := <-ch
		if err := created.Err(); err != nil {
			return result{}, err
		}
		wg.Go(func() {
			for resp := range ch {
				for _, ev := range resp.Events {
					rev := ev.Kv.ModRevision
					mu.Lock()
					if rev <= seen[i] {
						misordered.Add(1)
					}
					got[i]++
					if seen[i] < want && rev >= want {
						rec.add(time.Since(sent))
					}
					seen[i] = max(seen[i], rev)
					cond.Broadcast()
					mu.Unlock()
				}
			}
		})
	}
	after := b.footprintNow(ctx)

	runCtx, cancel := context.WithTimeout(ctx, b.duration)
	defer cancel()
	var delivered atomic.Int64
	go b.progress(runCtx, scenario, t, func() int { return int(delivered.Load()) })
	puts := 0
	start := time.Now()
	undelivered := 0
	perKey := make([]int, b.watchers) // puts of each key, for distinct
	for n := 0; runCtx.Err() == nil; n++ {
		k, wait := n%64, seen
		if distinct {
			k = n % b.watchers
			wait = seen[k : k+1]
		}
		r, err := clis[0].Put(runCtx, prefix+strconv.Itoa(k), strconv.Itoa(n))
		if err != nil {
			if runCtx.Err() == nil {
				rec.errors.Add(1)
			}
			continue
		}
		puts++
		if distinct {
			perKey[k]++
		}
		mu.Lock()
		want, sent = r.Header.Revision, time.Now()
		mu.Unlock()
		if awaitSeen(&mu, cond, wait, r.Header.Revision, sent) {
			delivered.Add(1)
		} else {
			undelivered++
		}
	}
	elapsed := time.Since(start)
	mu.Lock()
	missed := 0
	for i, n := range got {
		if distinct {
			missed += max(0, perKey[i]-n)
		} else {
			missed += max(0, puts-n)
		}
	}
	mu.Unlock()
	stop()
	wg.Wait()
	res := rec.result(scenario, t.name, 0)
	res.Ops = float64(delivered.Load()) / elapsed.Seconds()
	res.Count = int(delivered.Load())
	res.Extra = map[string]any{
		"watchers":          b.watchers,
		"puts_undelivered":  undelivered,
		"events_misordered": misordered.Load(),
		"events_missed":     missed,
	}
	before.grown(after, t, res.Extra)
	if g, ok := res.Extra["proxy_rss_growth_mib"].(float64); ok {
		res.Extra["proxy_kib_per_watcher"] = g * 1024 / float64(b.watchers)
	}
	return res, nil
}
