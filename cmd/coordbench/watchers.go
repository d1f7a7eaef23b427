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
	clis, closeAll, err := t.clients(32)
	if err != nil {
		return result{}, err
	}
	defer closeAll()
	b.settleWatchers(ctx, scenario, t)
	prefix := b.unique("watchers") + "/"
	watchers0, werr0 := etcdWatchers(ctx, b.etcdURL)

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
		ch := clis[i%len(clis)].Watch(clientv3.WithRequireLeader(wctx), prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
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
	watchers, werr := etcdWatchers(ctx, b.etcdURL)

	runCtx, cancel := context.WithTimeout(ctx, b.duration)
	defer cancel()
	var delivered atomic.Int64
	go b.progress(runCtx, scenario, t, func() int { return int(delivered.Load()) })
	puts := 0
	start := time.Now()
	undelivered := 0
	for n := 0; runCtx.Err() == nil; n++ {
		r, err := clis[0].Put(runCtx, prefix+strconv.Itoa(n%64), strconv.Itoa(n))
		if err != nil {
			if runCtx.Err() == nil {
				rec.errors.Add(1)
			}
			continue
		}
		puts++
		mu.Lock()
		want, sent = r.Header.Revision, time.Now()
		mu.Unlock()
		if awaitSeen(&mu, cond, seen, r.Header.Revision, sent) {
			delivered.Add(1)
		} else {
			undelivered++
		}
	}
	elapsed := time.Since(start)
	mu.Lock()
	missed := 0
	for _, n := range got {
		missed += max(0, puts-n)
	}
	mu.Unlock()
	stop()
	wg.Wait()
	res := rec.result(scenario, t.name, 0)
	res.Ops = float64(delivered.Load()) / elapsed.Seconds()
	res.Count = int(delivered.Load())
	res.Extra = map[string]any{
		"watchers":            b.watchers,
		"puts_undelivered":    undelivered,
		"events_misordered":   misordered.Load(),
		"events_missed":       missed,
		"etcd_watchers_added": added(watchers0, werr0, watchers, werr),
	}
	return res, nil
}
