package passthrough

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coordproxy/coordproxy/etcdio"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Watchers of their own: a watcher that does not share has an etcd watch
// on an etcd stream of its own, made from its create with the proxy's
// watch ID, so that etcd answers it exactly as natively (compaction,
// permission, fragments, an empty range); its responses go to the client
// with the client's watch ID. One that only waits to share catches up
// alone and joins the shared watch once it has been sent every event up
// to a revision the shared watch keeps the events after (watchshare.go).

// ownMode is what a watcher's own etcd watch is for.
type ownMode int

const (
	ownAnswer  ownMode = iota // the client's create, answered by etcd; it stays alone
	ownCatchUp                // the client's create, with history the shared watch does not keep
	ownResume                 // a watcher whose client fell behind; it was answered before
)

type ownWatch struct {
	wt     *wWatcher
	mode   ownMode
	ctx    context.Context
	cancel context.CancelFunc
	stream pb.Watch_WatchClient
	sendMu sync.Mutex
	last   int64        // receive's: every event up to last was queued
	asked  atomic.Int64 // when progress was last asked (unix ns)
}

// startOwn gives wt an etcd watch of its own from revision start. It
// returns once etcd answered the create, so that the client's creates are
// answered in order.
func (s *wStream) startOwn(wt *wWatcher, start int64, mode ownMode) error {
	ctx, cancel := context.WithCancel(s.ctx)
	stream, err := pb.NewWatchClient(s.w.etcd.Conn(ctx)).Watch(ctx)
	if err != nil {
		cancel()
		return err
	}
	o := &ownWatch{wt: wt, mode: mode, ctx: ctx, cancel: cancel, stream: stream}
	c := wt.cr
	cr := &pb.WatchCreateRequest{Key: c.Key, RangeEnd: c.RangeEnd, StartRevision: start, ProgressNotify: c.ProgressNotify,
		Filters: c.Filters, PrevKv: c.PrevKv, Fragment: c.Fragment}
	s.mu.Lock()
	if wt.canceled {
		s.mu.Unlock()
		cancel()
		return nil
	}
	wt.own = o
	s.mu.Unlock()
	if err := stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: cr}}); err != nil {
		cancel()
		return err
	}
	created := make(chan struct{})
	go o.receive(created)
	select {
	case <-created:
	case <-ctx.Done():
	}
	return nil
}

// resume moves a watcher whose client fell behind to a watch of its own
// from the first revision it was not sent.
func (s *wStream) resume(wt *wWatcher) {
	s.mu.Lock()
	next, canceled := wt.next, wt.canceled
	s.mu.Unlock()
	if canceled {
		return
	}
	s.w.m.moves.WithLabelValues("own").Inc()
	if err := s.startOwn(wt, next, ownResume); err != nil {
		s.fail(err)
	}
}

func (o *ownWatch) receive(created chan struct{}) {
	wt, s := o.wt, o.wt.s
	answered := sync.OnceFunc(func() { close(created) })
	handed := false
	defer func() {
		answered()
		o.cancel()
		s.mu.Lock()
		if wt.own == o {
			wt.own = nil
		}
		g := s.g
		s.mu.Unlock()
		if !handed && o.mode != ownAnswer && g != nil {
			g.idle(keyOf(wt.cr))
		}
	}()
	for {
		resp, err := o.stream.Recv()
		if err != nil {
			if o.ctx.Err() == nil {
				s.fail(err) // the client's own stream would have failed
			}
			return
		}
		if resp.Header != nil {
			s.w.groups.last.Store(resp.Header)
		}
		switch {
		case resp.Created && resp.Canceled: // refused
			s.mu.Lock()
			wt.refusedE = true
			s.mu.Unlock()
			if o.mode == ownResume {
				resp = &pb.WatchResponse{Header: resp.Header, WatchId: wt.id, Canceled: true, CancelReason: resp.CancelReason}
			}
			_ = s.pushWait(resp)
			return
		case resp.Created:
			if o.mode != ownResume {
				resp.WatchId = wt.id
				if s.pushWait(resp) != nil {
					return
				}
			}
			answered()
			if o.mode != ownAnswer {
				go o.nudge()
			}
			continue
		case resp.WatchId == clientv3.InvalidWatchID: // RequestProgress's answer
			o.last = max(o.last, resp.Header.Revision)
			s.progressAnswer(nil, o, resp.Header)
			if o.mode != ownAnswer {
				if handed = o.handOver(); handed {
					return
				}
			}
			continue
		default:
			s.w.out(resp)
			resp.WatchId = wt.id
			if s.pushWait(resp) != nil || resp.Canceled {
				return
			}
			if n := len(resp.Events); n > 0 && !resp.Fragment {
				o.last = max(o.last, resp.Events[n-1].Kv.ModRevision)
			} else if n == 0 {
				o.last = max(o.last, resp.Header.Revision) // a progress notification
			}
		}
		if o.mode == ownAnswer {
			continue
		}
		if handed = o.handOver(); handed {
			return
		}
		go o.askProgress(false)
	}
}

// handOver makes the watcher a shared watch's, if it is caught up.
func (o *ownWatch) handOver() bool {
	s := o.wt.s
	s.mu.Lock()
	g := s.g
	s.mu.Unlock()
	return g != nil && g.adopt(o)
}

// nudge asks etcd for progress every 100 ms until the watch is handed over
// or ends: etcd does not answer while it is catching up, and a watch of a
// quiet range has no events to show how far it got.
func (o *ownWatch) nudge() {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		o.askProgress(false)
		select {
		case <-t.C:
		case <-o.ctx.Done():
			return
		}
	}
}

// askProgress asks etcd for the stream's progress: at most one each 100 ms
// unless now (a client's RequestProgress).
func (o *ownWatch) askProgress(now bool) {
	t := time.Now().UnixNano()
	if !now && t-o.asked.Load() < int64(100*time.Millisecond) {
		return
	}
	o.asked.Store(t)
	o.sendMu.Lock()
	defer o.sendMu.Unlock()
	_ = o.stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}})
}

// cancelByClient cancels the etcd watch; etcd's answer goes to the client.
func (o *ownWatch) cancelByClient() {
	o.sendMu.Lock()
	defer o.sendMu.Unlock()
	// The stream's only watch has etcd's first ID.
	if err := o.stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: 0}}}); err != nil {
		o.cancel()
	}
}

// adopt makes o's watcher a watcher of the shared watch of its key, if
// that keeps every event after what o has sent (asking etcd for one if
// there is none). Not done while the client is too far behind for what
// the shared watch has to give it.
func (g *wGroup) adopt(o *ownWatch) bool {
	wt, s := o.wt, o.wt.s
	k := keyOf(wt.cr)
	g.mu.Lock()
	defer g.mu.Unlock()
	sw := g.byKey[k]
	if sw == nil {
		if g.err == nil {
			go g.watch(k)
		}
		return false
	}
	if sw.created == nil || sw.gone || o.last < sw.floor {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if wt.canceled || wt.own != o {
		return false
	}
	n := 0
	for _, r := range sw.buf {
		if lastRev(r) > o.last {
			n++
		}
	}
	if n > 0 && s.fullLocked(n) {
		return false
	}
	wt.own = nil
	sw.enterLocked(wt, o.last+1)
	g.w.m.moves.WithLabelValues("shared").Inc()
	// A RequestProgress waiting for this watch's etcd stream, closed now,
	// has its answer: every event up to o.last was queued.
	s.progressAnswerLocked(nil, o, &pb.ResponseHeader{ClusterId: sw.header.ClusterId, MemberId: sw.header.MemberId,
		Revision: o.last, RaftTerm: sw.header.RaftTerm})
	return true
}

// join makes wt a watcher of the shared watch of its key: the first of it
// is answered with the shared watch's own created answer; a later one asks
// etcd (probe; probeNow, shared, for the current revision) for the header
// etcd would answer with, and so whether the caller may watch there, and
// whether its start revision is compacted.
// A watcher the shared watch cannot serve from its start revision catches
// up alone first; one etcd refuses gets etcd's own answer.
func (s *wStream) join(wt *wWatcher) error {
	g, err := s.group()
	if err != nil {
		return err
	}
	k := keyOf(wt.cr)
	for range 3 {
		sw, first := g.watch(k)
		select {
		case <-sw.ready:
		case <-s.ctx.Done():
			return context.Cause(s.ctx)
		}
		g.mu.Lock()
		refused, hdr, gone := sw.refused, sw.created, sw.gone
		g.mu.Unlock()
		if refused != nil && first {
			s.mu.Lock()
			wt.refusedE = true
			s.pushLocked(refused)
			s.mu.Unlock()
			return nil
		}
		if refused != nil || hdr == nil {
			break
		}
		start := wt.cr.StartRevision
		if !first || gone {
			var r *pb.RangeResponse
			var err error
			if start == 0 {
				r, err = sw.probeNow(s.ctx)
			} else {
				r, err = probe(s.ctx, s.w.etcd, wt.cr.Key, wt.cr.RangeEnd, start)
			}
			if err != nil {
				return s.startOwn(wt, start, ownAnswer)
			}
			hdr = r.Header
		}
		if start == 0 {
			start = hdr.Revision + 1
		}
		ok, retry := g.add(wt, sw, hdr, start)
		if ok {
			return nil
		}
		if !retry {
			return s.startOwn(wt, wt.cr.StartRevision, ownCatchUp)
		}
	}
	return s.startOwn(wt, wt.cr.StartRevision, ownAnswer)
}

// probe is a count-only Range of a watch's keys with the credentials of
// ctx at rev (the current one if rev is 0 or in the future): etcd's header
// for its create, and etcd's judgement of the caller's permission (a
// watch needs read permission on its range) and of a compacted rev.
func probe(ctx context.Context, e *etcdio.Etcd, key, end []byte, rev int64) (*pb.RangeResponse, error) {
	kv := pb.NewKVClient(e.Conn(ctx))
	req := &pb.RangeRequest{Key: key, RangeEnd: end, Revision: rev, CountOnly: true, Serializable: true}
	r, err := kv.Range(ctx, req)
	if rev > 0 && errors.Is(rpctypes.Error(err), rpctypes.ErrFutureRev) {
		req.Revision = 0
		r, err = kv.Range(ctx, req)
	}
	return r, err
}

func (wt *wWatcher) refused() bool {
	wt.s.mu.Lock()
	defer wt.s.mu.Unlock()
	return wt.refusedE
}
