package passthrough

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coordproxy/coordproxy/etcdio"
	"github.com/prometheus/client_golang/prometheus"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"
)

// ReadCache answers serializable reads of single keys from etcd's own
// answers kept up to date by a watch (--read-cache-keys): a key read twice
// within rcIdle is kept, with the revision it is known at, and every change
// etcd makes to it, whoever writes it, comes through the watch, until no
// one read it for rcIdle or more recently read keys push it out. An answer from the
// cache carries in its header the revision it reflects, which is etcd's
// state of the key at that revision, as a member a little behind would
// answer a serializable read. It is never older than any revision etcd
// answered this replica with (etcdio.Etcd.SeenRevision): a client reads its
// own writes, and a read never goes back in time behind one before it; a
// key behind that is read from etcd while the cache asks etcd's progress
// to catch up.
//
// Only reads that etcd would judge exactly as the cache does are served:
// serializable, one key, the current revision, no revision filters, and
// sent as the proxy's own (no caller's token, which etcd's RBAC would
// judge on each read, and no require-leader, which etcd answers from its
// raft state); the policy's check at the edge is made on every read, hit
// or not. Linearizable reads always go to etcd: only a quorum can say
// which revision is current, and asking costs etcd as much as the read.
type ReadCache struct {
	etcd *etcdio.Etcd
	max  int
	ctx  context.Context // the watches' and progress requests' (an etcd stream of their own)
	stop context.CancelFunc

	mu      sync.Mutex
	entries map[string]*rcEntry
	once    map[string]time.Time // keys read once lately, not kept yet
	asking  atomic.Bool
	total   *prometheus.CounterVec
}

type rcEntry struct {
	cancel context.CancelFunc
	// under ReadCache.mu
	ready bool               // the watch was created
	kv    *mvccpb.KeyValue   // nil: no such key
	rev   int64              // every change up to rev came
	hdr   *pb.ResponseHeader // etcd's latest
	used  time.Time
}

// NewReadCache returns a cache of up to keys keys (their watches end when
// the proxy stops), its metrics registered in reg.
func NewReadCache(etcd *etcdio.Etcd, keys int, reg prometheus.Registerer) *ReadCache {
	stop, cancel := etcd.WithStop(context.Background())
	c := &ReadCache{etcd: etcd, max: keys, entries: map[string]*rcEntry{}, once: map[string]time.Time{}, stop: cancel,
		ctx: metadata.AppendToOutgoingContext(stop, "coordproxy-read-cache", "1"),
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "coordproxy", Name: "read_cache_total",
			Help: "Serializable single-key reads the read cache could serve, by result: hit (answered from the cache), miss (not kept yet), behind (kept, but not yet at a revision this replica answered; read from etcd).",
		}, []string{"result"})}
	for _, r := range []string{"hit", "miss", "behind"} {
		c.total.WithLabelValues(r)
	}
	reg.MustRegister(c.total)
	go c.expire(stop)
	return c
}

// rcIdle is how long a key no one reads stays kept (and watched), and how
// long a key read once is remembered: a key is kept from its second read
// within rcIdle, so that reads of keys read once cost etcd no watch.
const rcIdle = time.Minute

// expire drops the keys no one read for rcIdle, until stop ends.
func (c *ReadCache) expire(stop context.Context) {
	t := time.NewTicker(rcIdle / 6)
	defer t.Stop()
	for {
		select {
		case <-stop.Done():
			return
		case now := <-t.C:
			c.mu.Lock()
			for k, e := range c.entries {
				if now.Sub(e.used) > rcIdle {
					c.dropLocked(k)
				}
			}
			for k, at := range c.once {
				if now.Sub(at) > rcIdle {
					delete(c.once, k)
				}
			}
			c.mu.Unlock()
		}
	}
}

// serves says the cache may answer r for the caller of ctx.
func (c *ReadCache) serves(ctx context.Context, r *pb.RangeRequest) bool {
	return c != nil && r.Serializable && len(r.Key) > 0 && len(r.RangeEnd) == 0 && r.Revision == 0 &&
		r.MinModRevision == 0 && r.MaxModRevision == 0 && r.MinCreateRevision == 0 && r.MaxCreateRevision == 0 &&
		c.etcd.CredentialsOf(ctx).Plain()
}

// get answers r from the cache, or nil.
func (c *ReadCache) get(r *pb.RangeRequest) *pb.RangeResponse {
	seen := c.etcd.SeenRevision()
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[string(r.Key)]
	switch {
	case e == nil || !e.ready:
		c.total.WithLabelValues("miss").Inc()
		return nil
	case e.rev < seen:
		c.total.WithLabelValues("behind").Inc()
		go c.askProgress()
		return nil
	}
	c.total.WithLabelValues("hit").Inc()
	e.used = time.Now()
	resp := &pb.RangeResponse{Header: &pb.ResponseHeader{ClusterId: e.hdr.ClusterId, MemberId: e.hdr.MemberId,
		Revision: e.rev, RaftTerm: e.hdr.RaftTerm}}
	if e.kv == nil {
		return resp
	}
	resp.Count = 1
	if r.CountOnly {
		return resp
	}
	kv := e.kv
	if r.KeysOnly {
		kv = &mvccpb.KeyValue{Key: kv.Key, CreateRevision: kv.CreateRevision, ModRevision: kv.ModRevision, Version: kv.Version, Lease: kv.Lease}
	}
	resp.Kvs = []*mvccpb.KeyValue{kv}
	return resp
}

// fill keeps what etcd answered to r, and starts its watch, if the answer
// is one the cache can keep (the key's whole value) and the key is not kept.
func (c *ReadCache) fill(r *pb.RangeRequest, resp *pb.RangeResponse) {
	if r.CountOnly || r.KeysOnly || len(resp.Kvs) > 1 || resp.Header == nil {
		return
	}
	key := string(r.Key)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries[key] != nil {
		return
	}
	if at, ok := c.once[key]; !ok || time.Since(at) > rcIdle {
		if len(c.once) >= 4*c.max {
			c.once = map[string]time.Time{} // a scan of many keys: start over
		}
		c.once[key] = time.Now()
		return
	}
	delete(c.once, key)
	if len(c.entries) >= c.max {
		c.evictLocked()
	}
	ctx, cancel := context.WithCancel(c.ctx)
	e := &rcEntry{cancel: cancel, rev: resp.Header.Revision, hdr: resp.Header, used: time.Now()}
	if len(resp.Kvs) == 1 {
		e.kv = resp.Kvs[0]
	}
	c.entries[key] = e
	ch := c.etcd.Own().Watch(ctx, key, clientv3.WithRev(e.rev+1), clientv3.WithProgressNotify(), clientv3.WithCreatedNotify())
	go c.follow(key, e, ch)
}

// evictLocked drops the least recently read key.
func (c *ReadCache) evictLocked() {
	var oldest string
	var at time.Time
	for k, e := range c.entries {
		if oldest == "" || e.used.Before(at) {
			oldest, at = k, e.used
		}
	}
	c.dropLocked(oldest)
}

func (c *ReadCache) dropLocked(key string) {
	if e := c.entries[key]; e != nil {
		e.cancel()
		delete(c.entries, key)
	}
}

// follow applies the key's watch to its entry until the watch ends (the
// entry is then dropped: evicted, the proxy stopping, or the revision
// after the read compacted before the watch started).
func (c *ReadCache) follow(key string, e *rcEntry, ch clientv3.WatchChan) {
	defer func() {
		c.mu.Lock()
		if c.entries[key] == e {
			c.dropLocked(key)
		}
		c.mu.Unlock()
	}()
	for wr := range ch {
		if wr.Err() != nil {
			return
		}
		c.mu.Lock()
		if c.entries[key] != e {
			c.mu.Unlock()
			return
		}
		switch {
		case wr.Created:
			e.ready = true
		case wr.IsProgressNotify():
			e.rev = max(e.rev, wr.Header.GetRevision())
		}
		for _, ev := range wr.Events {
			if ev.Type == mvccpb.PUT {
				e.kv = ev.Kv
			} else {
				e.kv = nil
			}
			e.rev = max(e.rev, ev.Kv.ModRevision)
		}
		if wr.Header != nil {
			e.hdr = wr.Header
		}
		c.mu.Unlock()
	}
}

// askProgress asks etcd for the watches' progress, once at a time: the
// answer brings every quiet key up to etcd's revision.
func (c *ReadCache) askProgress() {
	if !c.asking.CompareAndSwap(false, true) {
		return
	}
	defer c.asking.Store(false)
	ctx, cancel := context.WithTimeout(c.ctx, time.Second)
	defer cancel()
	_ = c.etcd.Own().RequestProgress(ctx)
}
