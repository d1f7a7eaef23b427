package grant

import (
	"context"

	"github.com/coordproxy/coordproxy/etcdio"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Release deletes key in one transaction if leased holds of it; if the key
// exists but leased does not hold it answers notOurs, and a key already gone
// is success. Unlock, Semaphore Release and RWLock Unlock share it.
func (g *Granter) Release(ctx context.Context, key string, leased clientv3.Cmp, notOurs error) (*pb.ResponseHeader, error) {
	// Batched with others (group commit): the one key is its prefix.
	resp, err := g.etcd.SendTxn(ctx, etcdio.Txn{
		If:     []clientv3.Cmp{leased},
		Then:   []clientv3.Op{clientv3.OpDelete(key)},
		Else:   []clientv3.Op{clientv3.OpGet(key, clientv3.WithKeysOnly())},
		Prefix: key,
	})
	if err != nil {
		return nil, err
	}
	if !resp.Succeeded && len(resp.Responses[0].GetResponseRange().Kvs) > 0 {
		return nil, notOurs
	}
	g.Released(key, 0)
	return resp.Header, nil
}
