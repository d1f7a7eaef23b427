package passthrough

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"

	"github.com/coordproxy/coordproxy/etcdio"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"
)

// Merged keep-alives: the LeaseKeepAlive streams of every client of a
// replica share one etcd stream per credentials (the etcd client, the
// caller's token and hasleader metadata, so that a caller's token never
// carries another's keep-alive), where one stream per client would cost
// etcd a stream each. The proxy sends each client request on as it
// arrives and never one of its own, so a lease lives in etcd no longer
// than natively after its client stops; each request gets exactly one
// response, etcd's answer to it: etcd answers a stream's keep-alives one at
// a time, in order, so the answers for a lease come back in the order its
// requests were sent, and each goes to the client whose request was the
// oldest unanswered one for that lease. A client that closes its side gets
// the answers to what it sent, then the end of its stream, as from etcd.
// When the shared stream fails (etcd stops, has no leader for a hasleader
// stream, the member is gone), every client stream on it ends with that
// error, as each would have natively; the next client stream opens a new
// one. An etcd stream with no client stream left is closed.

type kaKey struct {
	client           *clientv3.Client
	token, hasLeader string
}

// keepAlives is a replica's shared keep-alive streams, by credentials.
type keepAlives struct {
	etcd *etcdio.Etcd
	mu   sync.Mutex
	ups  map[kaKey]*kaUp
}

// kaUp is one shared etcd stream.
type kaUp struct {
	ka     *keepAlives
	key    kaKey
	stream pb.Lease_LeaseKeepAliveClient
	cancel context.CancelFunc

	sendMu sync.Mutex // Send, and the order of waiting with it

	mu      sync.Mutex
	waiting map[int64][]*kaDown // by lease: the client streams awaiting etcd's answer, oldest first
	downs   int                 // client streams attached
	err     error               // the stream's end, once ended
	ended   chan struct{}
}

// kaDown is one client stream's side of a shared stream.
type kaDown struct {
	mu      sync.Mutex
	answers []*pb.LeaseKeepAliveResponse // to send to the client, in order
	pending int                          // requests sent on, not yet answered
	notify  chan struct{}                // a value when answers or pending change (cap 1)
}

func (d *kaDown) poke() {
	select {
	case d.notify <- struct{}{}:
	default:
	}
}

func kaKeyOf(ctx context.Context, e *etcdio.Etcd) kaKey {
	k := kaKey{client: e.For(ctx)}
	if md, ok := metadata.FromOutgoingContext(ctx); ok {
		k.token = strings.Join(md.Get(rpctypes.TokenFieldNameGRPC), ",")
		k.hasLeader = strings.Join(md.Get(rpctypes.MetadataRequireLeaderKey), ",")
	}
	return k
}

// attach is the shared stream of ctx's credentials, opened if there is
// none (or the last one ended), with one more client stream on it.
func (ka *keepAlives) attach(ctx context.Context) (*kaUp, error) {
	key := kaKeyOf(ctx, ka.etcd)
	ka.mu.Lock()
	defer ka.mu.Unlock()
	if up := ka.ups[key]; up != nil {
		up.mu.Lock()
		if up.err == nil {
			up.downs++
			up.mu.Unlock()
			return up, nil
		}
		up.mu.Unlock()
	}
	// The stream outlives the client that opens it: only the caller's
	// credentials go with it.
	var kv []string
	if key.token != "" {
		kv = append(kv, rpctypes.TokenFieldNameGRPC, key.token)
	}
	if key.hasLeader != "" {
		kv = append(kv, rpctypes.MetadataRequireLeaderKey, key.hasLeader)
	}
	sctx, cancel := ka.etcd.WithStop(context.Background())
	if len(kv) > 0 {
		sctx = metadata.AppendToOutgoingContext(sctx, kv...)
	}
	stream, err := pb.NewLeaseClient(ka.etcd.Conn(sctx)).LeaseKeepAlive(sctx)
	if err != nil {
		cancel()
		return nil, etcdio.StopErr(sctx, err)
	}
	up := &kaUp{ka: ka, key: key, stream: stream, cancel: cancel, waiting: map[int64][]*kaDown{}, downs: 1, ended: make(chan struct{})}
	if ka.ups == nil {
		ka.ups = map[kaKey]*kaUp{}
	}
	ka.ups[key] = up
	go up.receive(sctx)
	return up, nil
}

// detach takes a client stream off up; the last one closes it.
func (up *kaUp) detach(d *kaDown) {
	up.ka.mu.Lock()
	defer up.ka.mu.Unlock()
	up.mu.Lock()
	defer up.mu.Unlock()
	// Answers still due to d are dropped when they come; each keeps its
	// turn, so that the others' answers go to them.
	for _, q := range up.waiting {
		for i, x := range q {
			if x == d {
				q[i] = nil
			}
		}
	}
	up.downs--
	if up.downs == 0 {
		if up.ka.ups[up.key] == up {
			delete(up.ka.ups, up.key)
		}
		up.cancel()
	}
}

// send sends req on for d.
func (up *kaUp) send(d *kaDown, req *pb.LeaseKeepAliveRequest) error {
	up.sendMu.Lock()
	defer up.sendMu.Unlock()
	up.mu.Lock()
	if up.err != nil {
		up.mu.Unlock()
		return up.err
	}
	up.waiting[req.ID] = append(up.waiting[req.ID], d)
	up.mu.Unlock()
	d.mu.Lock()
	d.pending++
	d.mu.Unlock()
	return up.stream.Send(req)
}

// receive hands each answer to the client stream whose request it is.
func (up *kaUp) receive(ctx context.Context) {
	for {
		resp, err := up.stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = rpctypes.ErrGRPCStopped
			}
			up.mu.Lock()
			up.err = etcdio.StopErr(ctx, err)
			up.mu.Unlock()
			close(up.ended)
			up.ka.mu.Lock()
			if up.ka.ups[up.key] == up {
				delete(up.ka.ups, up.key)
			}
			up.ka.mu.Unlock()
			return
		}
		up.mu.Lock()
		q := up.waiting[resp.ID]
		var d *kaDown
		if len(q) > 0 {
			d = q[0]
			if len(q) == 1 {
				delete(up.waiting, resp.ID)
			} else {
				up.waiting[resp.ID] = q[1:]
			}
		}
		up.mu.Unlock()
		if d == nil {
			continue // its client went away
		}
		d.mu.Lock()
		d.pending--
		d.answers = append(d.answers, resp)
		d.mu.Unlock()
		d.poke()
	}
}

// LeaseKeepAlive serves one client stream on the shared stream of its
// credentials (see keepAlives).
func (l *Lease) LeaseKeepAlive(stream pb.Lease_LeaseKeepAliveServer) error {
	ctx := stream.Context()
	up, err := l.ka.attach(ctx)
	if err != nil {
		return err
	}
	d := &kaDown{notify: make(chan struct{}, 1)}
	defer up.detach(d)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err == nil {
				err = up.send(d, req)
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
				return err // the client went away, or the edge refused its request
			}
			closed = true
		case <-up.ended:
			up.mu.Lock()
			err := up.err
			up.mu.Unlock()
			// What etcd answered before it ended still goes out.
			if serr := l.flush(stream, d); serr != nil {
				return serr
			}
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
		if err := l.flush(stream, d); err != nil {
			return err
		}
		d.mu.Lock()
		drained := d.pending == 0 && len(d.answers) == 0
		d.mu.Unlock()
		if closed && drained {
			return nil
		}
	}
}

// flush sends d's answers to the client.
func (l *Lease) flush(stream pb.Lease_LeaseKeepAliveServer, d *kaDown) error {
	for {
		d.mu.Lock()
		if len(d.answers) == 0 {
			d.mu.Unlock()
			return nil
		}
		resp := d.answers[0]
		d.answers = d.answers[1:]
		d.mu.Unlock()
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}
