package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The noisy neighbour: tenant A floods Lock+Unlock from floodClients
// clients on distinct names; tenant B, one client, does Lock+Unlock on a
// name of its own. Three phases on each target, each for the duration: B
// alone, the flood alone, then both at once. What counts is B's latency
// and rate under the flood against B alone, and the flood's rate. Through
// the proxy the tenants are two identities (client certificates); natively
// etcd knows no tenants.

const floodClients = 128

func noisyScenario(ctx context.Context, b *bench, t target, title string) (result, error) {
	var clis []*clientv3.Client
	defer func() {
		for _, c := range clis {
			c.Close()
		}
	}()
	dial := func(tenant string) (*clientv3.Client, error) {
		c, err := t.dialAs(tenant)
		if err == nil {
			clis = append(clis, c)
		}
		return c, err
	}
	leaseCtx, stopLeases := context.WithCancel(context.Background())
	defer stopLeases()
	bCli, err := dial("tenant-b")
	if err != nil {
		return result{}, err
	}
	bLease, err := grant(leaseCtx, bCli, 60)
	if err != nil {
		return result{}, err
	}
	aClis := make([]*clientv3.Client, floodClients)
	aLeases := make([]clientv3.LeaseID, floodClients)
	for i := range aClis {
		if aClis[i], err = dial("tenant-a"); err != nil {
			return result{}, err
		}
		if aLeases[i], err = grant(leaseCtx, aClis[i], 60); err != nil {
			return result{}, err
		}
	}
	defer revokeAll(bCli, append([]clientv3.LeaseID{bLease}, aLeases...))
	bName := []byte(b.unique("tenant-b"))
	aNames := make([][]byte, floodClients)
	for i := range aNames {
		aNames[i] = []byte(b.unique(fmt.Sprintf("tenant-a-%d", i)))
	}

	// phase runs B (if withB) and the flood (if withFlood) for the duration.
	phase := func(name string, withB, withFlood bool) (bLock, bUnlock, flood *recorder, elapsed time.Duration) {
		bLock, bUnlock, flood = newRecorder(), newRecorder(), newRecorder()
		runCtx, cancel := context.WithTimeout(ctx, b.duration)
		defer cancel()
		var wg sync.WaitGroup
		if withB {
			wg.Go(func() { lockLoop(runCtx, bCli, bName, bLease, bLock, bUnlock) })
		}
		if withFlood {
			for i := range aClis {
				wg.Go(func() { lockLoop(runCtx, aClis[i], aNames[i], aLeases[i], flood, nil) })
			}
		}
		count := bLock.count
		if !withB {
			count = flood.count
		}
		b.progress(runCtx, title+": "+name, t, count)
		wg.Wait()
		return bLock, bUnlock, flood, time.Since(bLock.start)
	}
	bAloneLock, bAloneUnlock, _, aloneElapsed := phase("B alone", true, false)
	_, _, floodAlone, floodElapsed := phase("the flood alone", false, true)
	bLock, bUnlock, flood, elapsed := phase("B under the flood", true, true)

	alone := bAloneLock.result(title, t.name, aloneElapsed)
	aloneUnlock := bAloneUnlock.result(title, t.name, aloneElapsed)
	r := bLock.result(title, t.name, elapsed)
	underUnlock := bUnlock.result(title, t.name, elapsed)
	fa := floodAlone.result(title, t.name, floodElapsed)
	f := flood.result(title, t.name, elapsed)
	r.Errors += alone.Errors + fa.Errors + f.Errors
	r.Extra = map[string]any{
		"b_alone_ops":           round1(alone.Ops),
		"b_alone_p99_ms":        alone.P99MS,
		"b_p99_ratio":           round2(r.P99MS / alone.P99MS),
		"b_rate_ratio":          round2(r.Ops / alone.Ops),
		"b_unlock_alone_p99_ms": aloneUnlock.P99MS,
		"b_unlock_p99_ms":       underUnlock.P99MS,
		"flood_alone_ops":       round1(fa.Ops),
		"flood_ops":             round1(f.Ops),
		"flood_p99_ms":          f.P99MS,
	}
	return r, nil
}
