package grant

import (
	"context"

	"github.com/coordproxy/coordproxy/etcdio"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Release deletes key in one transaction if it is attached to lease (0: to
// any lease); if the key exists on another lease it answers notOurs, and a
// key already gone is success. With a fencing token (not 0) only the
// acquisition created at that revision is deleted: the same key created
// again since (the same lease acquiring the same name) is a newer
// acquisition, left held, and the release of the older one is success, so a
// retried release never hits a newer hold (etcd #22082, #22115). Unlock,
// Semaphore Release and RWLock Unlock share it.
func (g *Granter) Release(ctx context.Context, key string, lease clientv3.LeaseID, token int64, notOurs error) (*pb.ResponseHeader, error) {
	if token < 0 {
		return nil, ErrBadFencingToken
	}
	ifs := []clientv3.Cmp{clientv3.Compare(clientv3.LeaseValue(key), "=", lease)}
	if lease == 0 {
		ifs[0] = clientv3.Compare(clientv3.LeaseValue(key), ">", 0)
	}
	if token != 0 {
		ifs = append(ifs, clientv3.Compare(clientv3.CreateRevision(key), "=", token))
	}
	// Batched with others (group commit): the one key is its prefix. (Not
	// WithKeysOnly: etcd answers that from its index, without the lease.)
	resp, err := g.etcd.SendTxn(ctx, etcdio.Txn{
		If:     ifs,
		Then:   []clientv3.Op{clientv3.OpDelete(key)},
		Else:   []clientv3.Op{clientv3.OpGet(key)},
		Prefix: key,
	})
	if err != nil {
		return nil, err
	}
	if !resp.Succeeded {
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			if kv := kvs[0]; kv.Lease == 0 || lease != 0 && kv.Lease != int64(lease) {
				return nil, notOurs
			}
			return resp.Header, nil // a newer acquisition: left held
		}
	}
	g.Released(key, token)
	return resp.Header, nil
}
