package passthrough

import (
	"context"
	"errors"
	"io"
	"sync"

	"github.com/coordproxy/coordproxy/etcdio"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
)

// Merged keep-alives: the LeaseKeepAlive streams of every client of a
// replica share the etcd streams of their etcdio.Credentials (the etcd client,
// the caller's token and hasleader metadata, so that a caller's token never
// carries another's keep-alive), where one stream per client would cost
// etcd a stream each. The proxy sends each client request on as it comes
// and never one of its own, so a lease lives in etcd no longer than
// natively after its client stops (etcd-io/etcd#13031 is grpc-proxy's
// failing at this).
//
// One etcd stream while it keeps up: etcd handles a stream's keep-alives one
// at a time, and a follower forwards each to the leader, so one stream
// carries only so many a second (through a follower here, ~2 300: 10 000
// leases renewed every 2 s lost a third of them). When every stream of the
// credentials has kaSpread keep-alives unanswered, another is opened, up to
// kaStreams; each request goes to the stream with the fewest unanswered.
// etcd answers a stream's keep-alives in order, so each answer goes to the
// request for its lease that is the oldest unanswered on that stream, and
// a client gets its answers in the order of its requests (an answer that
// comes early waits for the earlier ones), exactly one each. A client that
// closes its side gets the answers to what it sent, then the end of its
// stream. When an etcd stream fails (etcd stops, has no leader for a
// hasleader stream, the member is gone), every client stream of those
// credentials ends with that error, as each would have natively, and the
// next client stream starts afresh. Streams with no client left are closed.

const (
	kaStreams = 8
	kaSpread  = 16
)

// keepAlives is a replica's shared keep-alive streams, by credentials.
type keepAlives struct {
	etcd   *etcdio.Etcd
	mu     sync.Mutex
	groups map[etcdio.Credentials]*kaGroup
}

// kaGroup is one credentials' etcd streams and the client streams on them.
type kaGroup struct {
	ka     *keepAlives
	key    etcdio.Credentials
	ctx    context.Context // the etcd streams', with the credentials
	cancel context.CancelFunc

	mu    sync.Mutex
	ups   []*kaUp
	downs int           // client streams attached
	err   error         // the first etcd stream's failure
	ended chan struct{} // closed with err
}

// kaUp is one etcd stream.
type kaUp struct {
	stream      pb.Lease_LeaseKeepAliveClient
	sendMu      sync.Mutex          // Send, and the order of waiting with it
	waiting     map[int64][]*kaSlot // by lease, oldest first; under kaGroup.mu
	outstanding int                 // under kaGroup.mu
}

// kaSlot is one client request's answer, to come.
type kaSlot struct {
	d    *kaDown // nil once its client went away
	resp *pb.LeaseKeepAliveResponse
}

// kaDown is one client stream.
type kaDown struct {
	mu     sync.Mutex
	slots  []*kaSlot     // its requests' answers, in the order it sent them
	notify chan struct{} // a value when an answer came (cap 1)
}

// attach puts a client stream on the group of ctx's credentials, made if
// there is none (or the last one ended) with its first etcd stream open at
// once: etcd ends a hasleader stream when it has no leader, and a client
// that has sent nothing yet must learn it too. The stream is opened with
// no lock held (it waits for a connection to etcd, as a client's own
// would).
func (ka *keepAlives) attach(ctx context.Context) (*kaGroup, error) {
	key := ka.etcd.CredentialsOf(ctx)
	if g := ka.join(key); g != nil {
		return g, nil
	}
	// The streams outlive the client that opens them: only the caller's
	// credentials go with them.
	sctx, cancel := ka.etcd.WithStop(context.Background())
	sctx = key.Context(sctx)
	g := &kaGroup{ka: ka, key: key, ctx: sctx, cancel: cancel, downs: 1, ended: make(chan struct{})}
	stream, err := pb.NewLeaseClient(ka.etcd.Conn(sctx)).LeaseKeepAlive(sctx)
	if err != nil {
		cancel()
		return nil, etcdio.StopErr(sctx, err)
	}
	ka.mu.Lock()
	defer ka.mu.Unlock()
	if other := ka.joinLocked(key); other != nil { // opened meanwhile
		cancel()
		return other, nil
	}
	g.addLocked(stream)
	if ka.groups == nil {
		ka.groups = map[etcdio.Credentials]*kaGroup{}
	}
	ka.groups[key] = g
	return g, nil
}

// join puts a client stream on key's group if it has one that has not
// failed.
func (ka *keepAlives) join(key etcdio.Credentials) *kaGroup {
	ka.mu.Lock()
	defer ka.mu.Unlock()
	return ka.joinLocked(key)
}

func (ka *keepAlives) joinLocked(key etcdio.Credentials) *kaGroup {
	g := ka.groups[key]
	if g == nil {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err != nil {
		return nil
	}
	g.downs++
	return g
}

// addLocked makes stream one of g's and starts receiving its answers.
// Under g.mu, or before g is shared.
func (g *kaGroup) addLocked(stream pb.Lease_LeaseKeepAliveClient) *kaUp {
	up := &kaUp{stream: stream, waiting: map[int64][]*kaSlot{}}
	g.ups = append(g.ups, up)
	go g.receive(up)
	return up
}

// detach takes d off g; the last client closes g's etcd streams. Answers
// still due to d are dropped when they come (each keeps its turn).
func (g *kaGroup) detach(d *kaDown) {
	g.ka.mu.Lock()
	defer g.ka.mu.Unlock()
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, up := range g.ups {
		for _, q := range up.waiting {
			for _, s := range q {
				if s.d == d {
					s.d = nil
				}
			}
		}
	}
	g.downs--
	if g.downs == 0 {
		if g.ka.groups[g.key] == g {
			delete(g.ka.groups, g.key)
		}
		g.cancel()
	}
}

// fail ends g with err: every client stream on it ends with it.
func (g *kaGroup) fail(err error) {
	g.mu.Lock()
	if g.err == nil {
		g.err = etcdio.StopErr(g.ctx, err)
		close(g.ended)
	}
	g.mu.Unlock()
	g.ka.mu.Lock()
	if g.ka.groups[g.key] == g {
		delete(g.ka.groups, g.key)
	}
	g.ka.mu.Unlock()
	g.cancel()
}

// streamLocked is the etcd stream the next request goes on: the one with
// the fewest unanswered, or a new one when every one has kaSpread and the
// connection to etcd is ready (g.mu is held: it never waits for one).
// Under g.mu.
func (g *kaGroup) streamLocked() *kaUp {
	var best *kaUp
	for _, up := range g.ups {
		if best == nil || up.outstanding < best.outstanding {
			best = up
		}
	}
	if best.outstanding < kaSpread || len(g.ups) == kaStreams {
		return best
	}
	stream, err := pb.NewLeaseClient(g.ka.etcd.Conn(g.ctx)).LeaseKeepAlive(g.ctx, grpc.WaitForReady(false))
	if err != nil {
		return best
	}
	return g.addLocked(stream)
}

// send sends req on for d.
func (g *kaGroup) send(d *kaDown, req *pb.LeaseKeepAliveRequest) error {
	g.mu.Lock()
	if g.err != nil {
		g.mu.Unlock()
		return g.err
	}
	up := g.streamLocked()
	g.mu.Unlock()
	slot := &kaSlot{d: d}
	d.mu.Lock()
	d.slots = append(d.slots, slot)
	d.mu.Unlock()
	up.sendMu.Lock()
	defer up.sendMu.Unlock()
	g.mu.Lock()
	up.waiting[req.ID] = append(up.waiting[req.ID], slot)
	up.outstanding++
	g.mu.Unlock()
	return up.stream.Send(req)
}

// receive hands each answer of up to the request it is for.
func (g *kaGroup) receive(up *kaUp) {
	for {
		resp, err := up.stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = rpctypes.ErrGRPCStopped
			}
			g.fail(err)
			return
		}
		g.mu.Lock()
		var slot *kaSlot
		if q := up.waiting[resp.ID]; len(q) > 0 {
			slot = q[0]
			if len(q) == 1 {
				delete(up.waiting, resp.ID)
			} else {
				up.waiting[resp.ID] = q[1:]
			}
			up.outstanding--
		}
		var d *kaDown
		if slot != nil {
			d = slot.d
		}
		g.mu.Unlock()
		if d == nil {
			continue // its client went away
		}
		d.mu.Lock()
		slot.resp = resp
		d.mu.Unlock()
		select {
		case d.notify <- struct{}{}:
		default:
		}
	}
}

// LeaseKeepAlive serves one client stream on the shared streams of its
// credentials (see keepAlives).
func (l *Lease) LeaseKeepAlive(stream pb.Lease_LeaseKeepAliveServer) error {
	ctx := stream.Context()
	g, err := l.ka.attach(ctx)
	if err != nil {
		return err
	}
	d := &kaDown{notify: make(chan struct{}, 1)}
	defer g.detach(d)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err == nil {
				err = g.send(d, req)
			}
			if err != nil {
				recvErr <- err
				return
			}
		}
	}()
	closed := false // the client is done sending
	for {
		select {
		case <-d.notify:
		case err := <-recvErr:
			if !errors.Is(err, io.EOF) {
				return err // the client went away, the edge refused its request, or etcd failed
			}
			closed = true
		case <-g.ended:
			// What etcd answered before it failed still goes out.
			if _, err := flush(stream, d); err != nil {
				return err
			}
			g.mu.Lock()
			defer g.mu.Unlock()
			return g.err
		case <-ctx.Done():
			return ctx.Err()
		}
		drained, err := flush(stream, d)
		if err != nil {
			return err
		}
		if closed && drained {
			return nil
		}
	}
}

// flush sends d's answers that are due, in order: up to the first request
// not yet answered. drained: none is left to come.
func flush(stream pb.Lease_LeaseKeepAliveServer, d *kaDown) (drained bool, err error) {
	for {
		d.mu.Lock()
		if len(d.slots) == 0 || d.slots[0].resp == nil {
			drained = len(d.slots) == 0
			d.mu.Unlock()
			return drained, nil
		}
		resp := d.slots[0].resp
		d.slots = d.slots[1:]
		d.mu.Unlock()
		if err := stream.Send(resp); err != nil {
			return false, err
		}
	}
}
