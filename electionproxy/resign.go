package electionproxy

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
)

// Resign gives up leadership with concurrency.Election.Resign's transaction:
// the key is deleted only if its create revision is still leader.rev. As in
// etcd, a resign by someone who is not (or no longer) leader succeeds and
// deletes nothing.
func (s *Server) Resign(ctx context.Context, req *epb.ResignRequest) (*epb.ResignResponse, error) {
	lk := req.Leader
	if err := checkLeaderKey(lk); err != nil {
		return nil, err
	}
	key := string(lk.Key)
	resp, err := s.etcd.For(ctx).Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", lk.Rev)).
		Then(clientv3.OpDelete(key)).
		Commit()
	if err != nil {
		return nil, err
	}
	if resp.Succeeded {
		s.g.Released(key, lk.Rev)
	}
	return &epb.ResignResponse{Header: resp.Header}, nil
}
