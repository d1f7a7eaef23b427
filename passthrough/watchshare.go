package passthrough

import (
	"context"
	"sync"
	"time"

	"github.com/coordproxy/coordproxy/etcdio"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Shared watches: a group is one etcd stream per credentials, carrying one
// etcd watch per key range and prev_kv that any watcher of those
// credentials joins. A shared watch is created from the current revision
// with progress notifications and no filters; each watcher filters its own
// events. It keeps its last wBuffer responses (one per revision: etcd sends
// a synced watch's events of one revision together), wBufferBytes of keys
// and values at most, so that a watcher whose start revision is that recent
// joins it with the events it missed; one that needs older history, or
// whose client fell wQueue responses per watcher behind, gets an etcd watch
// of its own (watchown.go) and joins once that has caught up with what the
// shared watch keeps, from the revision it reached: no event missed, none
// twice. A watch is cancelled in etcd when its last watcher leaves, or a
// linger after that (--watch-linger) if nobody joined it meanwhile. Every
// client stream is on its credentials' group from its start (etcd ends a
// hasleader stream without a leader, watchers or not); when the group's
// etcd stream fails, every client stream on it ends with its error (each
// would have natively), and the next client starts a new one: nobody joins
// a watch that has lost its stream (etcd-io/etcd#21813).

const (
	wBuffer      = 1024
	wBufferBytes = 8 << 20 // of keys and values
)

func eventBytes(resp *pb.WatchResponse) int {
	n := 0
	for _, ev := range resp.Events {
		n += len(ev.Kv.Key) + len(ev.Kv.Value)
		if ev.PrevKv != nil {
			n += len(ev.PrevKv.Key) + len(ev.PrevKv.Value)
		}
	}
	return n
}

type wKey struct {
	key, end string
	prevKV   bool
}

func keyOf(cr *pb.WatchCreateRequest) wKey {
	return wKey{key: string(cr.Key), end: string(cr.RangeEnd), prevKV: cr.PrevKv}
}

type wGroup struct {
	w      *Watch
	key    etcdio.Credentials
	ctx    context.Context // the etcd stream's, with the credentials
	cancel context.CancelFunc
	stream pb.Watch_WatchClient
	sendMu sync.Mutex // Send, and creates in the order of creating

	mu       sync.Mutex
	byKey    map[wKey]*sharedWatch
	byID     map[int64]*sharedWatch
	creating []*sharedWatch // sent, not yet answered, in order
	streams  map[*wStream]struct{}
	err      error
	// RequestProgress: one asked of etcd at a time (etcd ignores one while
	// a watch of the stream is unsynced; after a second it is presumed
	// ignored); the callbacks asked meanwhile wait for the next.
	progAsked    time.Time
	progInflight []func(*pb.ResponseHeader)
	progQueued   []func(*pb.ResponseHeader)
}

type sharedWatch struct {
	g     *wGroup
	k     wKey
	ready chan struct{} // closed once etcd answered the create, or the group failed
	// under g.mu
	id       int64
	created  *pb.ResponseHeader // etcd's header of the create
	refused  *pb.WatchResponse  // etcd's answer if it refused the create
	gone     bool               // refused, dropped or failed: join another
	members  map[*wWatcher]struct{}
	buf      []*pb.WatchResponse // the last responses with events, oldest first
	bufBytes int
	floor    int64              // every event after floor is in buf or to come
	known    int64              // every event up to known has come
	header   *pb.ResponseHeader // the latest
	probing  bool               // a probe for joiners from now is under way
	next     *wProbe            // the one joiners arriving meanwhile wait for
}

// wProbe is a count-only Range of a shared watch's keys, shared by the
// watchers that join it from the current revision meanwhile.
type wProbe struct {
	done chan struct{}
	resp *pb.RangeResponse
	err  error
}

// probeNow is etcd's header for a watch of sw's keys created now, and its
// judgement of the credentials' read permission there: one count-only
// Range shared by every joiner that arrives while none is under way. A
// joiner never takes one that began before it arrived, which could miss a
// write finished before its create.
func (sw *sharedWatch) probeNow(ctx context.Context) (*pb.RangeResponse, error) {
	g := sw.g
	g.mu.Lock()
	p := sw.next
	if p == nil {
		p = &wProbe{done: make(chan struct{})}
		sw.next = p
		if !sw.probing {
			sw.startProbeLocked()
		}
	}
	g.mu.Unlock()
	select {
	case <-p.done:
		return p.resp, p.err
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

func (sw *sharedWatch) startProbeLocked() {
	p, g := sw.next, sw.g
	sw.next, sw.probing = nil, true
	go func() {
		p.resp, p.err = probe(g.ctx, g.w.etcd, []byte(sw.k.key), []byte(sw.k.end), 0)
		close(p.done)
		g.mu.Lock()
		defer g.mu.Unlock()
		sw.probing = false
		if sw.next != nil {
			sw.startProbeLocked()
		}
	}()
}

// watch is the shared watch of k, asked of etcd if there is none; first
// says the caller asked.
func (g *wGroup) watch(k wKey) (sw *sharedWatch, first bool) {
	g.sendMu.Lock()
	defer g.sendMu.Unlock()
	g.mu.Lock()
	if sw := g.byKey[k]; sw != nil {
		g.mu.Unlock()
		return sw, false
	}
	sw = &sharedWatch{g: g, k: k, ready: make(chan struct{}), members: map[*wWatcher]struct{}{}}
	if g.err != nil {
		sw.gone = true
		close(sw.ready)
		g.mu.Unlock()
		return sw, true
	}
	g.byKey[k] = sw
	g.creating = append(g.creating, sw)
	g.mu.Unlock()
	err := g.stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{
		Key: []byte(k.key), RangeEnd: []byte(k.end), PrevKv: k.prevKV, ProgressNotify: true}}})
	if err != nil {
		g.fail(err)
	}
	return sw, true
}

// receive takes the group's etcd stream's responses until it fails.
func (g *wGroup) receive() {
	for {
		resp, err := g.stream.Recv()
		if err != nil {
			g.fail(err)
			return
		}
		if resp.Header != nil {
			g.w.groups.last.Store(resp.Header)
		}
		g.mu.Lock()
		var moved []*wWatcher
		ask := false
		switch {
		case resp.Created:
			g.createdLocked(resp)
		case resp.WatchId == clientv3.InvalidWatchID: // RequestProgress's answer
			ask = g.progressLocked(resp.Header)
		default:
			if sw := g.byID[resp.WatchId]; sw != nil {
				moved = sw.deliverLocked(resp)
			}
		}
		g.mu.Unlock()
		for _, wt := range moved {
			go wt.s.resume(wt)
		}
		if ask {
			go g.askProgress() // never wait on a send here: etcd's sends could wait on this loop
		}
	}
}

func (g *wGroup) createdLocked(resp *pb.WatchResponse) {
	if len(g.creating) == 0 {
		return
	}
	sw := g.creating[0]
	g.creating = g.creating[1:]
	defer close(sw.ready)
	if resp.Canceled {
		sw.refused, sw.gone = resp, true
		if g.byKey[sw.k] == sw {
			delete(g.byKey, sw.k)
		}
		return
	}
	sw.id, sw.created, sw.header = resp.WatchId, resp.Header, resp.Header
	sw.floor, sw.known = resp.Header.Revision, resp.Header.Revision
	g.byID[sw.id] = sw
	g.w.m.shared.Inc()
	if sw.gone { // dropped while etcd made it
		g.cancelUp(sw.id)
	}
}

// deliverLocked keeps a response of sw and sends it to its watchers. A
// watcher whose client has wQueue responses unsent leaves for an etcd
// watch of its own from the first revision it has not been sent: it is
// returned, to be resumed with no lock held.
func (sw *sharedWatch) deliverLocked(resp *pb.WatchResponse) (moved []*wWatcher) {
	g := sw.g
	if resp.Canceled { // etcd ended it (compaction of a watch it had fallen behind): each watcher goes on alone
		sw.dropLocked()
		for wt := range sw.members {
			wt.s.mu.Lock()
			wt.sw = nil
			wt.s.leaves++
			wt.s.mu.Unlock()
			moved = append(moved, wt)
		}
		return moved
	}
	g.w.out(resp)
	sw.header = resp.Header
	rev := resp.Header.Revision
	if n := len(resp.Events); n > 0 {
		rev = resp.Events[n-1].Kv.ModRevision
		sw.buf = append(sw.buf, resp)
		sw.bufBytes += eventBytes(resp)
		drop := 0
		for n := len(sw.buf); n-drop > wBuffer || (sw.bufBytes > wBufferBytes && n-drop > 1); drop++ {
			sw.floor = lastRev(sw.buf[drop])
			sw.bufBytes -= eventBytes(sw.buf[drop])
		}
		if drop > 0 {
			sw.buf = append(sw.buf[:0:0], sw.buf[drop:]...)
		}
	}
	sw.known = max(sw.known, rev)
	for wt := range sw.members {
		s := wt.s
		s.mu.Lock()
		prev := wt.next
		if out := wt.view(resp, rev); out != nil {
			if s.fullLocked(0) {
				delete(sw.members, wt)
				wt.sw, wt.next = nil, prev // resumed from the first revision it was not sent
				s.leaves++
				moved = append(moved, wt)
			} else {
				s.pushLocked(out)
			}
		}
		if wt.sw != nil && len(resp.Events) == 0 {
			wt.next = max(wt.next, rev+1) // a progress notification: every event up to rev came
		}
		s.mu.Unlock()
	}
	return moved
}

// add makes wt, whose create etcd answered with hdr, a watcher of sw from
// revision start: its created answer, then what sw kept from start on. Not
// done (false) when sw does not keep that far back or the client is too
// far behind for the replay; retry when sw went meanwhile.
func (g *wGroup) add(wt *wWatcher, sw *sharedWatch, hdr *pb.ResponseHeader, start int64) (ok, retry bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if sw.gone {
		return false, true
	}
	if start-1 < sw.floor {
		return false, false
	}
	s := wt.s
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range sw.buf {
		if lastRev(r) >= start {
			n++
		}
	}
	if n > 0 && s.fullLocked(n) {
		return false, false
	}
	s.pushLocked(&pb.WatchResponse{Header: hdr, WatchId: wt.id, Created: true})
	sw.enterLocked(wt, start)
	return true, false
}

// enterLocked makes wt a watcher of sw from revision start, sending it
// what sw kept from start on (under g.mu and wt's stream's mu).
func (sw *sharedWatch) enterLocked(wt *wWatcher, start int64) {
	wt.sw, wt.next = sw, start
	sw.members[wt] = struct{}{}
	for _, resp := range sw.buf {
		if out := wt.view(resp, lastRev(resp)); out != nil {
			wt.s.pushLocked(out)
		}
	}
}

// leave takes wt off its shared watch, if it is on one, with a canceled
// answer if answer; the watch is cancelled in etcd with its last watcher.
func (g *wGroup) leave(wt *wWatcher, answer bool) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := wt.s
	s.mu.Lock()
	sw := wt.sw
	if sw == nil {
		s.mu.Unlock()
		return false
	}
	wt.sw = nil
	delete(sw.members, wt)
	if answer {
		h := &pb.ResponseHeader{ClusterId: sw.header.ClusterId, MemberId: sw.header.MemberId,
			Revision: max(sw.header.Revision, sw.known), RaftTerm: sw.header.RaftTerm}
		s.pushLocked(&pb.WatchResponse{Header: h, WatchId: wt.id, Canceled: true})
	}
	s.mu.Unlock()
	if len(sw.members) == 0 {
		sw.idleLocked()
	}
	return true
}

// idleLocked is what happens to a shared watch its last watcher left:
// cancelled, or kept for the linger (for the watchers that come and go)
// and cancelled then if nobody came.
func (sw *sharedWatch) idleLocked() {
	switch linger := sw.g.w.linger; {
	case linger == 0:
		sw.dropLocked()
	case linger > 0:
		time.AfterFunc(linger, func() { sw.g.sweep(sw) })
	}
}

// idle applies idleLocked to the shared watch of k if nobody watches
// through it: its maker went to etcd alone and did not come back.
func (g *wGroup) idle(k wKey) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if sw := g.byKey[k]; sw != nil && len(sw.members) == 0 && sw.created != nil {
		sw.idleLocked()
	}
}

// sweep cancels sw if nobody watches through it (it lingered, or its
// maker went to etcd alone and did not come back), and closes the group if
// that leaves it nothing to do.
func (g *wGroup) sweep(sw *sharedWatch) {
	gs := &g.w.groups
	gs.mu.Lock()
	defer gs.mu.Unlock()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.byKey[sw.k] == sw && len(sw.members) == 0 && sw.created != nil {
		sw.dropLocked()
	}
	g.closeIfIdleLocked()
}

func (sw *sharedWatch) dropLocked() {
	g := sw.g
	sw.gone = true
	if g.byKey[sw.k] == sw {
		delete(g.byKey, sw.k)
	}
	if sw.created != nil && g.byID[sw.id] == sw {
		delete(g.byID, sw.id)
		g.w.m.shared.Dec()
		g.cancelUp(sw.id)
	}
}
