package grant

import (
	"context"
	"sync"
	"time"

	"github.com/coordproxy/coordproxy/etcdio"
	"github.com/coordproxy/coordproxy/quota"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultHoldCheck is how often the proxy checks that the keys it counts as
// held still exist.
const DefaultHoldCheck = 10 * time.Second

// holdCheckBatch is how many keys one check reads in one transaction, under
// etcd's default --max-txn-ops of 128.
const holdCheckBatch = 64

// holds counts, in coordproxy_holders, the keys this proxy granted until it
// learns they are gone. It keeps no etcd watch for them: a held lock that
// nobody waits for must cost etcd nothing (an uncontended Lock+Unlock costs
// the two requests it costs natively, and no watch message). It learns of a
// release at once when it goes through this proxy (Unlock, Release,
// Resign: Released; a lease revoked: etcdio's LeaseHooks) and of anything else (a
// release through another proxy or straight at etcd, a lease that expired)
// at the next check, which reads the held keys every check interval, 64 to
// a request, and only while there are any.
type holds struct {
	etcd    *etcdio.Etcd
	gauge   *prometheus.GaugeVec
	every   time.Duration
	wg      sync.WaitGroup
	started sync.Once

	mu      sync.Mutex
	keys    map[string]heldKey            // by key
	byLease map[int64]map[string]struct{} // the keys of each lease
}

type heldKey struct {
	rev     int64
	service string
	lease   int64
	since   time.Time // when it was granted
	release func()    // gives the key back to its taker's quota of held keys
}

func newHolds(etcd *etcdio.Etcd, gauge *prometheus.GaugeVec, every time.Duration) *holds {
	if every <= 0 {
		every = DefaultHoldCheck
	}
	return &holds{etcd: etcd, gauge: gauge, every: every, keys: map[string]heldKey{}, byLease: map[int64]map[string]struct{}{}}
}

// add counts key, just granted with create revision rev on lease, as held
// by the call q (its quota of held keys: package quota). A key counted
// already is not counted twice; one counted with an older revision
// (deleted and created again since) is replaced.
func (h *holds) add(service, key string, rev int64, lease clientv3.LeaseID, q *quota.Call) {
	if h.etcd.Stopped() {
		return
	}
	h.started.Do(func() {
		h.wg.Add(1)
		go h.run()
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	if old, ok := h.keys[key]; ok {
		if old.rev == rev {
			return
		}
		h.dropLocked(key, old)
	}
	h.keys[key] = heldKey{rev: rev, service: service, lease: int64(lease), since: time.Now(), release: q.Claim(quota.Held)}
	if h.byLease[int64(lease)] == nil {
		h.byLease[int64(lease)] = map[string]struct{}{}
	}
	h.byLease[int64(lease)][key] = struct{}{}
	h.gauge.WithLabelValues(service).Inc()
}

// ages is how long the oldest counted hold of each service has lasted, in
// seconds.
func (h *holds) ages() map[string]float64 {
	now := time.Now()
	out := map[string]float64{}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, k := range h.keys {
		if age := now.Sub(k.since).Seconds(); age > out[k.service] {
			out[k.service] = age
		}
	}
	return out
}

// gone stops counting key if it is counted with revision rev (any revision
// for rev 0).
func (h *holds) gone(key string, rev int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if k, ok := h.keys[key]; ok && (rev == 0 || k.rev == rev) {
		h.dropLocked(key, k)
	}
}

// leaseGone stops counting every key of lease.
func (h *holds) leaseGone(lease int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for key := range h.byLease[lease] {
		h.dropLocked(key, h.keys[key])
	}
}

func (h *holds) dropLocked(key string, k heldKey) {
	delete(h.keys, key)
	if ks := h.byLease[k.lease]; ks != nil {
		delete(ks, key)
		if len(ks) == 0 {
			delete(h.byLease, k.lease)
		}
	}
	h.gauge.WithLabelValues(k.service).Dec()
	k.release()
}

// run checks the held keys every interval until the proxy stops.
func (h *holds) run() {
	defer h.wg.Done()
	t := time.NewTicker(h.every)
	defer t.Stop()
	for {
		select {
		case <-h.etcd.Stopping():
			return
		case <-t.C:
			h.check()
		}
	}
}

// check reads every held key and stops counting the ones that are gone or
// were created again. A read that fails (etcd unreachable, the proxy's own
// user not allowed to read a caller's keys) leaves its keys counted.
func (h *holds) check() {
	h.mu.Lock()
	type item struct {
		key string
		rev int64
	}
	items := make([]item, 0, len(h.keys))
	for key, k := range h.keys {
		items = append(items, item{key, k.rev})
	}
	h.mu.Unlock()
	for len(items) > 0 && !h.etcd.Stopped() {
		batch := items[:min(holdCheckBatch, len(items))]
		items = items[len(batch):]
		ops := make([]clientv3.Op, len(batch))
		for i, it := range batch {
			ops[i] = clientv3.OpGet(it.key, clientv3.WithKeysOnly())
		}
		ctx, cancel := context.WithTimeout(context.Background(), h.etcd.RequestTimeout())
		resp, err := h.etcd.Own().Txn(ctx).Then(ops...).Commit()
		cancel()
		if err != nil {
			continue
		}
		for i, it := range batch {
			kvs := resp.Responses[i].GetResponseRange().Kvs
			if len(kvs) == 0 || kvs[0].CreateRevision != it.rev {
				h.gone(it.key, it.rev)
			}
		}
	}
}

// Released tells the Granter that key, created at rev (0: whatever its
// revision), was deleted through this proxy (Unlock, Release, Resign).
func (g *Granter) Released(key string, rev int64) { g.holds.gone(key, rev) }

// leaseRevoked tells the Granter that lease was revoked through this proxy:
// its keys are gone.
func (g *Granter) leaseRevoked(lease int64) { g.holds.leaseGone(lease) }
