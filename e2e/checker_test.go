package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/keyspace"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// recordCheck is what the checker proves from etcd's data about one name's
// fenced records.
type recordCheck struct {
	Records int `json:"records"`
	// Overlaps: a record of an older holder accepted after a record of a
	// newer one, i.e. two critical sections that were both live.
	Overlaps int `json:"overlaps"`
	// NotHolder: a record accepted at a revision where its writer's key was
	// not the oldest under the name's prefix, i.e. not the holder.
	NotHolder int `json:"not_holder"`
}

func (a *recordCheck) add(b recordCheck) {
	a.Records += b.Records
	a.Overlaps += b.Overlaps
	a.NotHolder += b.NotHolder
}

// checkRecords reads every record under prefix+name and checks it against
// etcd's own history: at the revision the record was written, the writer's
// key must have been the oldest key under the name's prefix.
func checkRecords(t *testing.T, kv *clientv3.Client, prefix, name string) recordCheck {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	resp, err := kv.Get(ctx, prefix+name+"/", clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("read records: %v", err)
	}
	kvs := resp.Kvs
	sort.Slice(kvs, func(i, j int) bool { return kvs[i].ModRevision < kvs[j].ModRevision })
	var res recordCheck
	res.Records = len(kvs)
	recs := make([]record, len(kvs))
	for i, kv := range kvs {
		if err := json.Unmarshal(kv.Value, &recs[i]); err != nil {
			t.Fatalf("record %s: %v", kv.Key, err)
		}
	}
	var newest int64
	for i, r := range recs {
		if r.Rev < newest {
			res.Overlaps++
			t.Errorf("%s: record at revision %d by client %d (lock rev %d) accepted after a newer holder's (lock rev %d)", name, kvs[i].ModRevision, r.Client, r.Rev, newest)
		}
		newest = max(newest, r.Rev)
	}
	// The holder at each record's revision, from etcd's history. Reads at
	// old revisions are independent: a few at a time.
	var mu sync.Mutex
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i := range kvs {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			h, err := kv.Get(ctx, keyspace.Prefix(name), append(clientv3.WithFirstCreate(), clientv3.WithRev(kvs[i].ModRevision))...)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				t.Errorf("read holder of %s at %d: %v", name, kvs[i].ModRevision, err)
			case len(h.Kvs) == 0 || string(h.Kvs[0].Key) != recs[i].Key || h.Kvs[0].CreateRevision != recs[i].Rev:
				res.NotHolder++
				t.Errorf("%s: record at revision %d by %s (rev %d) but the holder then was %v", name, kvs[i].ModRevision, recs[i].Key, recs[i].Rev, h.Kvs)
			}
		})
	}
	wg.Wait()
	return res
}

// ghosts lists waiter keys whose client is neither locking, holding nor
// campaigning for that name, and has not been for grace: keys nobody will
// ever use, that block the queue until their lease expires.
func (w *workload) ghosts(t *testing.T, names []string, grace time.Duration) []string {
	t.Helper()
	now := time.Now()
	owner := map[int64]*worker{}
	w.mu.Lock()
	for _, wk := range w.workers {
		wk.mu.Lock()
		for _, l := range wk.leases {
			owner[int64(l)] = wk
		}
		wk.mu.Unlock()
	}
	w.mu.Unlock()
	var out []string
	for _, name := range names {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		resp, err := w.kv.Get(ctx, keyspace.Prefix(name), clientv3.WithPrefix())
		cancel()
		if err != nil {
			t.Fatalf("ghost scan: %v", err)
		}
		for _, kv := range resp.Kvs {
			if !w.inUse(owner[kv.Lease], name, now, grace) {
				out = append(out, describe(kv, owner[kv.Lease]))
			}
		}
	}
	return out
}

func (w *workload) inUse(wk *worker, name string, now time.Time, grace time.Duration) bool {
	if wk == nil {
		return false
	}
	wk.mu.Lock()
	defer wk.mu.Unlock()
	return wk.name == name || now.Sub(wk.ended[name]) < grace
}

func describe(kv *mvccpb.KeyValue, wk *worker) string {
	who := "no known client"
	if wk != nil {
		who = fmt.Sprintf("client %d", wk.id)
	}
	return fmt.Sprintf("%s (create rev %d, lease %x, %s)", kv.Key, kv.CreateRevision, kv.Lease, who)
}

// waitNoKeys waits until no key is left under any of names; it returns what
// is left when bound passes.
func waitNoKeys(kv *clientv3.Client, names []string, bound time.Duration) []string {
	deadline := time.Now().Add(bound)
	for {
		var left []string
		for _, name := range names {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			resp, err := kv.Get(ctx, keyspace.Prefix(name), clientv3.WithPrefix())
			cancel()
			if err != nil {
				left = append(left, err.Error())
				continue
			}
			for _, kv := range resp.Kvs {
				left = append(left, describe(kv, nil))
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// overrunLogs counts the calls the proxies logged as having outlived their
// deadline by more than the request timeout.
func overrunLogs(ps []*proxyProc) int {
	n := 0
	for _, p := range ps {
		n += strings.Count(p.logText(), "call outlived its deadline")
	}
	return n
}
