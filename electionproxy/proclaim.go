package electionproxy

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
)

// Proclaim updates the leader's value with concurrency.Election.Proclaim's
// transaction: put only if the key still has the leader's create revision.
func (s *Server) Proclaim(ctx context.Context, req *epb.ProclaimRequest) (*epb.ProclaimResponse, error) {
	lk := req.Leader
	if err := checkLeaderKey(lk); err != nil {
		return nil, err
	}
	key := string(lk.Key)
	leaseOpt := clientv3.WithLease(clientv3.LeaseID(lk.Lease))
	if lk.Lease == 0 {
		// etcd grants a fresh 60 s lease here and moves the leader key onto
		// it, so leadership silently ends a minute later. Keep the key's own
		// lease instead.
		s.l0.Note("Proclaim", string(lk.Name), "kept the leader key's own lease")
		leaseOpt = clientv3.WithIgnoreLease()
	}
	resp, err := s.etcd.For(ctx).Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", lk.Rev)).
		Then(clientv3.OpPut(key, string(req.Value), leaseOpt)).
		Commit()
	if err != nil {
		return nil, err
	}
	if !resp.Succeeded {
		return nil, errNotLeader
	}
	return &epb.ProclaimResponse{Header: resp.Header}, nil
}
