package main

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
)

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
	lease, release, err := keptLease(clis[0], 60)
	if err != nil {
		return result{}, err
	}
	defer release()
	name := []byte(b.unique("observe"))
	elec := epb.NewElectionClient(clis[0].ActiveConnection())
	watchers0, werr0 := etcdWatchers(ctx, b.etcdURL)
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
	watchers, werr := etcdWatchers(ctx, b.etcdURL)

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
		if awaitSeen(&mu, cond, seen, v, sent) {
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

// awaitSeen waits until every value of seen (guarded by mu, whose cond
// is broadcast on each change) is at least v, bounded by 5 s from sent;
// false if one is not.
func awaitSeen(mu *sync.Mutex, cond *sync.Cond, seen []int64, v int64, sent time.Time) bool {
	bound := time.AfterFunc(5*time.Second, func() { mu.Lock(); cond.Broadcast(); mu.Unlock() })
	defer bound.Stop()
	mu.Lock()
	defer mu.Unlock()
	for !allSeen(seen, v) && time.Since(sent) < 5*time.Second {
		cond.Wait()
	}
	return allSeen(seen, v)
}

func allSeen(seen []int64, v int64) bool {
	for _, s := range seen {
		if s < v {
			return false
		}
	}
	return true
}
