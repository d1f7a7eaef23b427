package proxy

import (
	"context"
	"fmt"
	"strings"

	"github.com/coordproxy/coordproxy/policy"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"google.golang.org/grpc/peer"
)

// The policy (package policy) is applied here, at the edge, to every call
// of every service, etcd's and coordproxy.v1's alike, the JSON gateway's
// too (it calls the same server): scope names the verb and the keys of each
// request; a refusal is etcd's PermissionDenied ("etcdserver: permission
// denied"), logged once and counted by verb. Watches are decided per watch
// created (allowWatch), in the Watch pass-through.

// access is what a request needs: its verb on its keys, and the use of a
// lease (0: none; -1: the lease of the key it releases, read from etcd: an
// RW lock's key names none). always: it needs no permission
// (Authenticate, Status, MemberList).
type access struct {
	verb   policy.Verb
	ranges []policy.KeyRange
	lease  int64
	always bool
}

// scope is the one place that reads a request's access: an RPC added to a
// service needs a case here, or no policy lets it through.
func scope(req any) access {
	switch r := req.(type) {
	case *v3lockpb.LockRequest:
		return access{verb: policy.Lock, ranges: names(r.Name), lease: r.Lease}
	case *v3lockpb.UnlockRequest:
		return access{verb: policy.Lock, ranges: keys(r.Key), lease: keyLease(r.Key)}
	case *v3electionpb.CampaignRequest:
		return access{verb: policy.Elect, ranges: names(r.Name), lease: r.Lease}
	case *v3electionpb.ProclaimRequest:
		return access{verb: policy.Elect, ranges: names(r.GetLeader().GetName()), lease: r.GetLeader().GetLease()}
	case *v3electionpb.ResignRequest:
		return access{verb: policy.Elect, ranges: names(r.GetLeader().GetName()), lease: r.GetLeader().GetLease()}
	case *v3electionpb.LeaderRequest:
		return access{verb: policy.Read, ranges: names(r.Name)}
	case *coordproxyv1.LockRequest:
		return access{verb: policy.Lock, ranges: names(r.Name), lease: r.Lease}
	case *coordproxyv1.UnlockRequest:
		lease := keyLease(r.Key)
		if lease == 0 && len(r.Key) > 0 {
			lease = -1
		}
		return access{verb: policy.Lock, ranges: keys(r.Key), lease: lease}
	case *coordproxyv1.AcquireRequest:
		return access{verb: policy.Lock, ranges: names(r.Name), lease: r.Lease}
	case *coordproxyv1.ReleaseRequest:
		return access{verb: policy.Lock, ranges: keys(r.Key), lease: keyLease(r.Key)}
	case *coordproxyv1.RWLockRequest:
		return access{verb: policy.Lock, ranges: names(r.Name), lease: r.Lease}
	case *coordproxyv1.DescribeRequest:
		return access{verb: policy.Read, ranges: names(r.Name)}
	case *coordproxyv1.ObserveRequest:
		return access{verb: policy.Read, ranges: names(r.Name)}
	case *coordproxyv1.SessionRequest:
		return access{verb: policy.Lease, lease: r.Lease}
	case *pb.RangeRequest:
		return access{verb: policy.Read, ranges: []policy.KeyRange{keyRange(r.Key, r.RangeEnd)}}
	case *pb.PutRequest:
		return access{verb: policy.Write, ranges: keys(r.Key)}
	case *pb.DeleteRangeRequest:
		return access{verb: policy.Write, ranges: []policy.KeyRange{keyRange(r.Key, r.RangeEnd)}}
	case *pb.CompactionRequest, *pb.LeaseLeasesRequest:
		return access{verb: policy.Admin}
	case *pb.LeaseGrantRequest:
		return access{verb: policy.Lease}
	case *pb.LeaseRevokeRequest:
		return access{verb: policy.Lease, lease: r.ID}
	case *pb.LeaseTimeToLiveRequest:
		return access{verb: policy.Lease, lease: r.ID}
	case *pb.LeaseKeepAliveRequest:
		return access{verb: policy.Lease, lease: r.ID}
	case *pb.AuthenticateRequest, *pb.StatusRequest, *pb.MemberListRequest:
		return access{always: true}
	}
	return access{}
}

func names(n []byte) []policy.KeyRange { return []policy.KeyRange{policy.Name(string(n))} }
func keys(k []byte) []policy.KeyRange  { return []policy.KeyRange{policy.Key(string(k))} }

func keyRange(key, end []byte) policy.KeyRange {
	return policy.KeyRange{Key: string(key), End: string(end)}
}

// txnScope is a Txn's keys: what its compares and reads touch needs read,
// what its puts and deletes touch needs write, nested transactions included.
func txnScope(t *pb.TxnRequest, read, write []policy.KeyRange) ([]policy.KeyRange, []policy.KeyRange) {
	for _, c := range t.Compare {
		read = append(read, keyRange(c.Key, c.RangeEnd))
	}
	for _, ops := range [][]*pb.RequestOp{t.Success, t.Failure} {
		for _, op := range ops {
			switch o := op.Request.(type) {
			case *pb.RequestOp_RequestRange:
				read = append(read, keyRange(o.RequestRange.Key, o.RequestRange.RangeEnd))
			case *pb.RequestOp_RequestPut:
				write = append(write, keys(o.RequestPut.Key)...)
			case *pb.RequestOp_RequestDeleteRange:
				write = append(write, keyRange(o.RequestDeleteRange.Key, o.RequestDeleteRange.RangeEnd))
			case *pb.RequestOp_RequestTxn:
				read, write = txnScope(o.RequestTxn, read, write)
			}
		}
	}
	return read, write
}

// authorize decides a request of method under the policy in force.
func (s *Server) authorize(ctx context.Context, method string, req any) error {
	p := s.policy.Policy()
	if p == nil || strings.HasPrefix(method, "/grpc.") { // health, reflection
		return nil
	}
	id := s.ids.of(ctx)
	if t, ok := req.(*pb.TxnRequest); ok {
		read, write := txnScope(t, nil, nil)
		if !p.Allows(id, policy.Read, read...) {
			return s.deny(ctx, id, method, policy.Read, read)
		}
		if !p.Allows(id, policy.Write, write...) {
			return s.deny(ctx, id, method, policy.Write, write)
		}
		return nil
	}
	a := scope(req)
	if a.always {
		return nil
	}
	if a.verb == "" || !p.Allows(id, a.verb, a.ranges...) {
		return s.deny(ctx, id, method, a.verb, a.ranges)
	}
	lease := a.lease
	if lease == -1 { // the key's own lease
		resp, err := s.access.Own().Get(ctx, string(req.(*coordproxyv1.UnlockRequest).Key))
		if err != nil {
			return err
		}
		lease = 0
		if len(resp.Kvs) > 0 {
			lease = resp.Kvs[0].Lease
		}
	}
	if lease != 0 {
		ok, err := s.mayUse(ctx, p, id, lease)
		if err != nil {
			return err
		}
		if !ok {
			return s.deny(ctx, id, method, policy.Lease, []policy.KeyRange{policy.Key(fmt.Sprintf("lease %x", lease))})
		}
	}
	return nil
}

// allowWatch decides a watch a caller creates: read on its keys.
func (s *Server) allowWatch(ctx context.Context, cr *pb.WatchCreateRequest) bool {
	p := s.policy.Policy()
	if p == nil {
		return true
	}
	id, r := s.ids.of(ctx), keyRange(cr.Key, cr.RangeEnd)
	if p.Allows(id, policy.Read, r) {
		return true
	}
	s.deny(ctx, id, "/etcdserverpb.Watch/Watch", policy.Read, []policy.KeyRange{r})
	return false
}

// deny logs and counts a refusal and returns etcd's answer for it.
func (s *Server) deny(ctx context.Context, id, method string, verb policy.Verb, ranges []policy.KeyRange) error {
	addr := ""
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		addr = p.Addr.String()
	}
	var what []string
	for _, r := range ranges {
		if r.End == "" {
			what = append(what, fmt.Sprintf("%q", r.Key))
		} else {
			what = append(what, fmt.Sprintf("[%q, %q)", r.Key, r.End))
		}
	}
	label := string(verb)
	if label == "" {
		label = "unknown"
	}
	s.denied.WithLabelValues(label).Inc()
	s.log.Warn("call refused by the policy", "identity", id, "verb", label, "method", method, "keys", strings.Join(what, " "), "address", addr)
	return rpctypes.ErrGRPCPermissionDenied
}
