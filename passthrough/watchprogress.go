package passthrough

import (
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// RequestProgress under sharing: a client stream's answer needs the
// progress of every etcd stream its watchers are on (the group's for the
// shared ones, each own watch's), and comes with the lowest revision of
// theirs, once each has answered: by then every event up to that revision
// of every watcher of the stream is queued before the answer.

// progress asks etcd for the group's progress and calls cb with its
// answer: every event up to its revision has been given to the watchers
// of every shared watch of the group.
func (g *wGroup) progress(cb func(*pb.ResponseHeader)) {
	g.mu.Lock()
	g.progQueued = append(g.progQueued, cb)
	ask := g.progInflight == nil || time.Since(g.progAsked) > time.Second
	if ask {
		g.progInflight, g.progQueued, g.progAsked = g.progQueued, nil, time.Now()
	}
	g.mu.Unlock()
	if ask {
		g.askProgress()
	}
}

func (g *wGroup) askProgress() {
	g.sendMu.Lock()
	defer g.sendMu.Unlock()
	if err := g.stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}}); err != nil {
		go g.fail(err)
	}
}

// progressLocked takes etcd's answer to RequestProgress; ask says the
// next is to be asked.
func (g *wGroup) progressLocked(h *pb.ResponseHeader) (ask bool) {
	for _, sw := range g.byID {
		sw.known = max(sw.known, h.Revision)
		sw.header = h
	}
	cbs := g.progInflight
	g.progInflight = nil
	if len(g.progQueued) > 0 {
		g.progInflight, g.progQueued, g.progAsked = g.progQueued, nil, time.Now()
		ask = true
	}
	for _, cb := range cbs {
		cb(h)
	}
	return ask
}

// wProgress is a client's RequestProgress being answered: by the group's
// etcd stream for the shared watchers, by each own watch's for itself.
type wProgress struct {
	leaves  int64
	waiting int
	owns    map[*ownWatch]bool
	hdr     *pb.ResponseHeader // the lowest revision answered so far
}

// requestProgress answers RequestProgress as etcd does: with the lowest
// revision its etcd streams report, once every watcher has been sent every
// event up to it; nothing, as etcd, when the stream has no watcher or one
// that is not caught up: one ended by etcd (compaction), one between a
// shared watch and its own, one that leaves a shared watch before the
// answer, one that starts after the revision answered. A later request
// replaces one not yet answered.
func (s *wStream) requestProgress() {
	s.mu.Lock()
	p := &wProgress{leaves: s.leaves, owns: map[*ownWatch]bool{}}
	shared := false
	for _, wt := range s.watchers {
		switch {
		case wt.own != nil:
			p.owns[wt.own] = true
		case wt.sw != nil:
			shared = true
		default:
			s.prog = nil
			s.mu.Unlock()
			return
		}
	}
	p.waiting = len(p.owns)
	if shared {
		p.waiting++
	}
	if p.waiting == 0 {
		s.mu.Unlock()
		return
	}
	s.prog = p
	g := s.g
	owns := make([]*ownWatch, 0, len(p.owns))
	for o := range p.owns {
		owns = append(owns, o)
	}
	s.mu.Unlock()
	if shared {
		g.progress(func(h *pb.ResponseHeader) { s.progressAnswer(p, nil, h) })
	}
	for _, o := range owns {
		o.askProgress(true)
	}
}

// progressAnswer takes one etcd stream's answer to a RequestProgress
// (o nil: the group's).
func (s *wStream) progressAnswer(p *wProgress, o *ownWatch, h *pb.ResponseHeader) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.progressAnswerLocked(p, o, h)
}

func (s *wStream) progressAnswerLocked(p *wProgress, o *ownWatch, h *pb.ResponseHeader) {
	if p == nil {
		p = s.prog
	}
	if p == nil || s.prog != p || (o != nil && !p.owns[o]) {
		return
	}
	if o != nil {
		delete(p.owns, o)
	}
	p.waiting--
	if p.hdr == nil || h.Revision < p.hdr.Revision {
		p.hdr = h
	}
	if p.waiting > 0 {
		return
	}
	s.prog = nil
	if s.leaves != p.leaves {
		return
	}
	for _, wt := range s.watchers {
		if wt.cr.StartRevision > p.hdr.Revision {
			return
		}
	}
	s.pushLocked(&pb.WatchResponse{Header: p.hdr, WatchId: clientv3.InvalidWatchID})
}
