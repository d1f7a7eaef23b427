package e2e

import (
	"context"
	"time"

	"github.com/coordproxy/coordproxy/keyspace"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// place says how many keys are ahead of wk's key in name's queue; -1 when
// it has no key there.
func (w *workload) place(wk *worker, name string) (key string, ahead int) {
	wk.mu.Lock()
	lease := wk.lease
	wk.mu.Unlock()
	key = keyspace.OwnerKey(name, lease)
	ctx, cancel := context.WithTimeout(w.ctx, time.Second)
	defer cancel()
	own, err := w.kv.Get(ctx, key)
	if err != nil || len(own.Kvs) == 0 {
		return key, -1
	}
	// Not WithCountOnly: etcd counts the whole range and applies
	// MaxCreateRev only to the keys it returns.
	r, err := w.kv.Get(ctx, keyspace.Prefix(name), clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithMaxCreateRev(own.Kvs[0].CreateRevision-1))
	if err != nil {
		return key, -1
	}
	return key, len(r.Kvs)
}

// waitingWorkers are the lock workers inside a Lock call now, with at least
// behind keys ahead of theirs in the queue.
func (w *workload) waitingWorkers(behind int) []*worker {
	w.mu.Lock()
	var cands []*worker
	for _, wk := range w.workers {
		wk.mu.Lock()
		if wk.waiting && wk.name != w.election && !wk.gone {
			cands = append(cands, wk)
		}
		wk.mu.Unlock()
	}
	w.mu.Unlock()
	var out []*worker
	for _, wk := range cands {
		if name, ok := wk.waitingFor(); ok {
			if _, ahead := w.place(wk, name); ahead >= behind {
				out = append(out, wk)
			}
		}
	}
	return out
}

// waitingFor is the name wk is inside a Lock call for, if it is.
func (wk *worker) waitingFor() (string, bool) {
	wk.mu.Lock()
	defer wk.mu.Unlock()
	return wk.name, wk.waiting && wk.name != ""
}
