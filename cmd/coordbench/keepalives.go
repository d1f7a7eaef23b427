package main

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// keepAliveTTL is the keepalives scenario's lease TTL: etcd's client renews
// a lease a third of it after the last answer, every 2 s.
const keepAliveTTL = 6

// keepalivesScenario: -leases leases granted over 64 connections and kept
// alive by etcd's client (one keep-alive stream per connection, carrying
// all of its leases) for the duration (at least two renewals). Ops is keep-alive answers received
// per second (the latency is the time between a lease's answers); the notes
// give the keep-alive streams etcd had for them (natively one per
// connection), the keep-alives etcd received per answer the clients got
// (a proxy that answers from a renewal of its own sends fewer) and how
// many leases were lost.
func keepalivesScenario(ctx context.Context, b *bench, t target, scenario string) (result, error) {
	clis, closeAll, err := t.clients(64)
	if err != nil {
		return result{}, err
	}
	defer closeAll()
	leases := make([]clientv3.LeaseID, b.leases)
	if err := grantAll(leases, func(i int) (clientv3.LeaseID, error) {
		g, err := clis[i%len(clis)].Grant(ctx, keepAliveTTL)
		if err != nil {
			return 0, err
		}
		return g.ID, nil
	}); err != nil {
		return result{}, err
	}
	defer revokeAll(clis[0], leases)

	streams0, serr0 := etcdKeepAliveStreams(ctx, b.etcdURL)
	kctx, stop := context.WithCancel(ctx)
	defer stop()
	var answers, lost atomic.Int64
	rec := newRecorder()
	var keeping sync.WaitGroup
	for i, l := range leases {
		ch, err := clis[i%len(clis)].KeepAlive(kctx, l)
		if err != nil {
			return result{}, err
		}
		keeping.Go(func() {
			last := time.Now()
			for range ch {
				answers.Add(1)
				rec.add(time.Since(last))
				last = time.Now()
			}
			if kctx.Err() == nil {
				lost.Add(1)
			}
		})
	}
	// At least two rounds of renewals (etcd's client renews a third of the
	// TTL after each answer), whatever -duration says.
	runCtx, cancel := context.WithTimeout(ctx, max(b.duration, 2*keepAliveTTL*time.Second/3))
	defer cancel()
	go b.progress(runCtx, scenario, t, func() int { return int(answers.Load()) })
	start := time.Now()
	from, received := answers.Load(), b.etcdKeepAlives(ctx)
	<-runCtx.Done()
	elapsed := time.Since(start)
	streams, serr := etcdKeepAliveStreams(ctx, b.etcdURL)
	n := answers.Load() - from
	if r := b.etcdKeepAlives(ctx); r >= 0 && received >= 0 && n > 0 {
		// etcd's keep-alives for each answer its clients got.
		received = round2((r - received) / float64(n))
	} else {
		received = -1
	}
	stop()
	keeping.Wait()
	res := rec.result(scenario, t.name, 0)
	res.Count = int(n)
	res.Ops = float64(n) / elapsed.Seconds()
	res.Extra = map[string]any{
		"leases":                      b.leases,
		"leases_lost":                 lost.Load(),
		"etcd_keepalive_streams_open": added(streams0, serr0, streams, serr),
	}
	if received >= 0 {
		res.Extra["etcd_keepalives_per_answer"] = received
	}
	return res, nil
}

// etcdKeepAliveStreams is how many LeaseKeepAlive streams etcd has open.
func etcdKeepAliveStreams(ctx context.Context, etcdURL string) (float64, error) {
	fams, err := readMetrics(ctx, etcdURL)
	if err != nil {
		return 0, err
	}
	labels := map[string]string{"grpc_method": "LeaseKeepAlive"}
	return sumMetric(fams, "grpc_server_started_total", labels) - sumMetric(fams, "grpc_server_handled_total", labels), nil
}
