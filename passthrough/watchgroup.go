package passthrough

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/coordproxy/coordproxy/etcdio"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// A group: the etcd stream of one credentials' shared watches, and the
// client streams on it (watchshare.go).

type wGroups struct {
	mu   sync.Mutex
	m    map[etcdio.Credentials]*wGroup
	last atomic.Pointer[pb.ResponseHeader] // the latest etcd header seen
}

// header is the latest header etcd sent, for the few answers the proxy
// makes up (a watcher cancelled between shared and own).
func (gs *wGroups) header() *pb.ResponseHeader {
	if h := gs.last.Load(); h != nil {
		return h
	}
	return &pb.ResponseHeader{}
}

// group attaches s to the group of its credentials, made (with its etcd
// stream, opened with no lock held) if there is none or it failed.
func (s *wStream) group() (*wGroup, error) {
	if s.g != nil {
		return s.g, nil
	}
	gs := &s.w.groups
	attach := func(g *wGroup) *wGroup {
		g.mu.Lock()
		defer g.mu.Unlock()
		if g.err != nil {
			return nil
		}
		g.streams[s] = struct{}{}
		s.mu.Lock()
		s.g = g
		s.mu.Unlock()
		return g
	}
	gs.mu.Lock()
	if g := gs.m[s.creds]; g != nil && attach(g) != nil {
		gs.mu.Unlock()
		return g, nil
	}
	gs.mu.Unlock()
	// The stream outlives the client that opens it: only the caller's
	// credentials go with it.
	ctx, cancel := s.w.etcd.WithStop(context.Background())
	ctx = s.creds.Context(ctx)
	stream, err := pb.NewWatchClient(s.w.etcd.Conn(ctx)).Watch(ctx)
	if err != nil {
		cancel()
		return nil, etcdio.StopErr(ctx, err)
	}
	g := &wGroup{w: s.w, key: s.creds, ctx: ctx, cancel: cancel, stream: stream, byKey: map[wKey]*sharedWatch{},
		byID: map[int64]*sharedWatch{}, streams: map[*wStream]struct{}{}}
	gs.mu.Lock()
	defer gs.mu.Unlock()
	if other := gs.m[s.creds]; other != nil && attach(other) != nil {
		cancel()
		return other, nil
	}
	if gs.m == nil {
		gs.m = map[etcdio.Credentials]*wGroup{}
	}
	gs.m[s.creds] = g
	attach(g)
	go g.receive()
	return g, nil
}

// detach takes a client stream off the group; the group's etcd stream
// closes with its last client, unless a shared watch lingers on it.
func (g *wGroup) detach(s *wStream) {
	gs := &g.w.groups
	gs.mu.Lock()
	defer gs.mu.Unlock()
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.streams, s)
	g.closeIfIdleLocked()
}

// closeIfIdleLocked closes the group's etcd stream when it has no client
// and no shared watch (under the groups' mu and its own).
func (g *wGroup) closeIfIdleLocked() {
	if len(g.streams) > 0 || len(g.byKey) > 0 || len(g.creating) > 0 || g.err != nil {
		return
	}
	g.failLocked(context.Canceled)
}

func (g *wGroup) fail(err error) {
	gs := &g.w.groups
	gs.mu.Lock()
	g.mu.Lock()
	streams := g.failLocked(err)
	g.mu.Unlock()
	gs.mu.Unlock()
	for _, s := range streams {
		s.fail(err)
	}
}

// failLocked ends the group (under the groups' mu and its own): it leaves
// the groups, its watches are gone, its clients returned to be ended with
// err.
func (g *wGroup) failLocked(err error) []*wStream {
	if g.err != nil {
		return nil
	}
	g.err = err
	g.cancel()
	if gs := &g.w.groups; gs.m[g.key] == g {
		delete(gs.m, g.key)
	}
	for _, sw := range g.creating {
		sw.gone = true
		close(sw.ready)
	}
	g.creating = nil
	for _, sw := range g.byKey {
		sw.gone = true
	}
	g.w.m.shared.Sub(float64(len(g.byID)))
	g.byID = map[int64]*sharedWatch{}
	streams := make([]*wStream, 0, len(g.streams))
	for s := range g.streams {
		streams = append(streams, s)
	}
	return streams
}

// cancelUp cancels an etcd watch of the group (its answer is ignored).
func (g *wGroup) cancelUp(id int64) {
	go func() {
		g.sendMu.Lock()
		defer g.sendMu.Unlock()
		_ = g.stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: id}}})
	}()
}
