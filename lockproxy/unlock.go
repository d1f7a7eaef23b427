package lockproxy

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
)

// Unlock deletes a lock ownership key. etcd's Unlock deletes any key it is
// given (#22082); this one deletes only a key of the form name/hex(lease)
// that is attached to that lease, in one transaction, and refuses anything
// else with InvalidArgument. A key that is already gone is success, as in etcd.
func (s *Server) Unlock(ctx context.Context, req *v3lockpb.UnlockRequest) (*v3lockpb.UnlockResponse, error) {
	hdr, err := s.b.unlock(ctx, string(req.Key))
	if err != nil {
		return nil, err
	}
	return &v3lockpb.UnlockResponse{Header: hdr}, nil
}

func (b *Backend) unlock(ctx context.Context, key string) (*pb.ResponseHeader, error) {
	if key == "" {
		return nil, rpctypes.ErrEmptyKey // etcd's answer to an empty key
	}
	_, lease, ok := ParseOwnerKey(key)
	if !ok {
		return nil, errNotOwnerKey
	}
	return b.release(ctx, key, clientv3.Compare(clientv3.LeaseValue(key), "=", lease), errNotOwnerKey)
}

// release deletes key in one transaction if leased holds of it; if the key
// exists but leased does not hold it answers notOurs, and a key already gone
// is success. Unlock, Semaphore Release and RWLock Unlock share it.
func (b *Backend) release(ctx context.Context, key string, leased clientv3.Cmp, notOurs error) (*pb.ResponseHeader, error) {
	resp, err := b.For(ctx).Txn(ctx).
		If(leased).
		Then(clientv3.OpDelete(key)).
		Else(clientv3.OpGet(key, clientv3.WithKeysOnly())).
		Commit()
	if err != nil {
		return nil, err
	}
	if !resp.Succeeded && len(resp.Responses[0].GetResponseRange().Kvs) > 0 {
		return nil, notOurs
	}
	return resp.Header, nil
}
