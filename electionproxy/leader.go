package electionproxy

import (
	"context"

	"github.com/coordproxy/coordproxy/keyspace"
	clientv3 "go.etcd.io/etcd/client/v3"
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
)

// Leader answers the current leader with a linearizable read, as
// concurrency.Election.Leader does.
func (s *Server) Leader(ctx context.Context, req *epb.LeaderRequest) (*epb.LeaderResponse, error) {
	if len(req.Name) == 0 {
		return nil, errNameMissing
	}
	resp, err := s.etcd.For(ctx).Get(ctx, keyspace.Prefix(string(req.Name)), clientv3.WithFirstCreate()...)
	if err != nil {
		return nil, err
	}
	if len(resp.Kvs) == 0 {
		return nil, errNoLeader
	}
	return &epb.LeaderResponse{Header: resp.Header, Kv: resp.Kvs[0]}, nil
}
