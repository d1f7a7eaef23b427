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

// scope is the verb a request needs and the keys it touches. always: the
// call needs no permission (Authenticate, Status, MemberList, health).
func scope(req any) (verb policy.Verb, ranges []policy.KeyRange, always bool) {
	switch r := req.(type) {
	case *v3lockpb.LockRequest:
		return policy.Lock, names(r.Name), false
	case *v3lockpb.UnlockRequest:
		return policy.Lock, keys(r.Key), false
	case *v3electionpb.CampaignRequest:
		return policy.Elect, names(r.Name), false
	case *v3electionpb.ProclaimRequest:
		return policy.Elect, names(r.GetLeader().GetName()), false
	case *v3electionpb.ResignRequest:
		return policy.Elect, names(r.GetLeader().GetName()), false
	case *v3electionpb.LeaderRequest:
		return policy.Read, names(r.Name), false
	case *coordproxyv1.LockRequest:
		return policy.Lock, names(r.Name), false
	case *coordproxyv1.UnlockRequest:
		return policy.Lock, keys(r.Key), false
	case *coordproxyv1.AcquireRequest:
		return policy.Lock, names(r.Name), false
	case *coordproxyv1.ReleaseRequest:
		return policy.Lock, keys(r.Key), false
	case *coordproxyv1.RWLockRequest:
		return policy.Lock, names(r.Name), false
	case *coordproxyv1.DescribeRequest:
		return policy.Read, names(r.Name), false
	case *coordproxyv1.ObserveRequest:
		return policy.Read, names(r.Name), false
	case *coordproxyv1.SessionRequest:
		return policy.Lease, nil, false
	case *pb.RangeRequest:
		return policy.Read, []policy.KeyRange{keyRange(r.Key, r.RangeEnd)}, false
	case *pb.PutRequest:
		return policy.Write, keys(r.Key), false
	case *pb.DeleteRangeRequest:
		return policy.Write, []policy.KeyRange{keyRange(r.Key, r.RangeEnd)}, false
	case *pb.CompactionRequest, *pb.LeaseLeasesRequest:
		return policy.Admin, nil, false
	case *pb.LeaseGrantRequest, *pb.LeaseRevokeRequest, *pb.LeaseTimeToLiveRequest, *pb.LeaseKeepAliveRequest:
		return policy.Lease, nil, false
	case *pb.AuthenticateRequest, *pb.StatusRequest, *pb.MemberListRequest:
		return "", nil, true
	}
	return "", nil, false
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
	verb, ranges, always := scope(req)
	if always {
		return nil
	}
	if verb == "" || !p.Allows(id, verb, ranges...) {
		return s.deny(ctx, id, method, verb, ranges)
	}
	lease := leaseOf(req)
	if u, ok := req.(*coordproxyv1.UnlockRequest); ok && lease == 0 && len(u.Key) > 0 {
		// An RW lock's key names no lease: read it.
		resp, err := s.access.Own().Get(ctx, string(u.Key))
		if err != nil {
			return err
		}
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
