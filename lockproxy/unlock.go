package lockproxy

import (
	"context"

	"github.com/coordproxy/coordproxy/answer"
	"github.com/coordproxy/coordproxy/keyspace"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
)

// Unlock deletes a lock ownership key. etcd's Unlock deletes any key it is
// given (#22082); this one deletes only a key of the form name/hex(lease)
// that is attached to that lease, in one transaction, and refuses anything
// else with InvalidArgument. A key that is already gone is success, as in etcd.
func (s *Server) Unlock(ctx context.Context, req *v3lockpb.UnlockRequest) (*v3lockpb.UnlockResponse, error) {
	hdr, err := s.unlock(ctx, string(req.Key), 0)
	if err != nil {
		return nil, err
	}
	return &v3lockpb.UnlockResponse{Header: hdr}, nil
}

// Unlock deletes an ownership key, as the compatible Unlock does; with a
// fencing token, only that acquisition of it (grant.Granter.Release).
func (l *Locks) Unlock(ctx context.Context, req *coordproxyv1.UnlockRequest) (*coordproxyv1.UnlockResponse, error) {
	hdr, err := l.unlock(ctx, string(req.Key), req.FencingToken)
	if err != nil {
		return nil, err
	}
	return &coordproxyv1.UnlockResponse{Header: answer.Header(hdr)}, nil
}

func (l *locks) unlock(ctx context.Context, key string, token int64) (*pb.ResponseHeader, error) {
	if key == "" {
		return nil, rpctypes.ErrEmptyKey // etcd's answer to an empty key
	}
	_, lease, ok := keyspace.ParseOwnerKey(key)
	if !ok {
		return nil, errNotOwnerKey
	}
	return l.g.Release(ctx, key, lease, token, errNotOwnerKey)
}
