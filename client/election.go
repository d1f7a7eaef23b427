package client

import (
	"context"
	"time"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/client/v3/concurrency"
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"google.golang.org/grpc"
)

// Election is a leader election on a name: etcd's Election service as the
// proxy serves it (the same election as a concurrency.Election of that
// name), with an Observe that also reports the loss of the leader.
type Election struct {
	s      Leaser
	elec   epb.ElectionClient
	ext    coordproxyv1.ElectionServiceClient
	name   string
	leader *epb.LeaderKey
	hdr    *pb.ResponseHeader
}

// NewElection returns an Election on name.
func NewElection(s Leaser, name string) *Election {
	conn := s.Client().ActiveConnection()
	return &Election{s: s, elec: epb.NewElectionClient(conn), ext: coordproxyv1.NewElectionServiceClient(conn), name: name}
}

// Campaign waits until this session leads, then proclaims val. A lease that
// ends while waiting is concurrency.ErrSessionExpired (the proxy checks
// after waiting, where etcd does not); leadership won after a Session's
// window passed returns the Session's error (Resign gives it back).
func (e *Election) Campaign(ctx context.Context, val string) error {
	ctx, end := sessionBound(ctx, e.s)
	resp, err := e.elec.Campaign(ctx, &epb.CampaignRequest{Name: []byte(e.name), Lease: int64(e.s.Lease()), Value: []byte(val)})
	if err = end(fromWire(err)); err != nil {
		return err
	}
	e.leader, e.hdr = resp.Leader, resp.Header
	return inWindow(e.s)
}

// Proclaim sets the leader's value; concurrency.ErrElectionNotLeader if this
// session does not lead.
func (e *Election) Proclaim(ctx context.Context, val string) error {
	if e.leader == nil {
		return concurrency.ErrElectionNotLeader
	}
	resp, err := e.elec.Proclaim(ctx, &epb.ProclaimRequest{Leader: e.leader, Value: []byte(val)})
	if err != nil {
		return fromWire(err)
	}
	e.hdr = resp.Header
	return nil
}

// Resign gives up leadership (nothing if this session does not lead).
func (e *Election) Resign(ctx context.Context) error {
	if e.leader == nil {
		return nil
	}
	resp, err := e.elec.Resign(ctx, &epb.ResignRequest{Leader: e.leader})
	if err != nil {
		return fromWire(err)
	}
	e.leader, e.hdr = nil, resp.Header
	return nil
}

// Leader reads the current leader; concurrency.ErrElectionNoLeader if none.
func (e *Election) Leader(ctx context.Context) (*mvccpb.KeyValue, error) {
	resp, err := e.elec.Leader(ctx, &epb.LeaderRequest{Name: []byte(e.name)})
	if err != nil {
		return nil, fromWire(err)
	}
	return resp.Kv, nil
}

// Observe streams the election's state: first the current one
// (EVENT_CURRENT), then every change in revision order, including
// EVENT_NO_LEADER when the leader resigns or its lease ends and nobody
// waits. If the stream breaks (the proxy restarts, or this reader fell too
// far behind) Observe starts again with EVENT_CURRENT. The channel is closed
// when ctx ends.
func (e *Election) Observe(ctx context.Context) <-chan *coordproxyv1.ObserveResponse {
	ch := make(chan *coordproxyv1.ObserveResponse)
	go func() {
		defer close(ch)
		retry := 50 * time.Millisecond
		for ctx.Err() == nil {
			if e.observeOnce(ctx, ch) {
				retry = 50 * time.Millisecond
			}
			select {
			case <-ctx.Done():
			case <-time.After(retry):
				retry = min(2*retry, 2*time.Second)
			}
		}
	}()
	return ch
}

// observeOnce relays one Observe stream; it tells whether anything came.
func (e *Election) observeOnce(ctx context.Context, ch chan<- *coordproxyv1.ObserveResponse) (got bool) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := e.ext.Observe(sctx, &coordproxyv1.ObserveRequest{Name: []byte(e.name)}, grpc.WaitForReady(true))
	if err != nil {
		return false
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return got
		}
		got = true
		select {
		case ch <- resp:
		case <-ctx.Done():
			return got
		}
	}
}

// Describe reads the leader (with its lease's TTL) and the candidates.
func (e *Election) Describe(ctx context.Context) (*coordproxyv1.ElectionDescription, error) {
	d, err := e.ext.Describe(ctx, &coordproxyv1.DescribeRequest{Name: []byte(e.name)})
	return d, fromWire(err)
}

// Key is this session's candidate key while it leads, "" otherwise.
func (e *Election) Key() string { return string(e.leader.GetKey()) }

// Rev is the candidate key's create revision while it leads.
func (e *Election) Rev() int64 { return e.leader.GetRev() }

// Header is the header of the last answer.
func (e *Election) Header() *pb.ResponseHeader { return e.hdr }
