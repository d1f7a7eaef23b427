package electionproxy

import (
	"context"

	"github.com/coordproxy/coordproxy/etcdio"
	"github.com/coordproxy/coordproxy/grant"
	"github.com/coordproxy/coordproxy/keyspace"
	clientv3 "go.etcd.io/etcd/client/v3"
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
)

// Campaign waits for leadership of req.Name as concurrency.Election.Campaign
// does, with the same keys and transactions, and two fixes: leadership is
// confirmed after the wait (a candidate whose lease expired while waiting is
// told so, never made leader: etcd #19597), and a campaign that fails or is
// cancelled after creating its key removes it (etcd #21128).
func (s *Server) Campaign(ctx context.Context, req *epb.CampaignRequest) (*epb.CampaignResponse, error) {
	if len(req.Name) == 0 {
		return nil, errNameMissing
	}
	name, val := string(req.Name), string(req.Value)
	lease, err := s.l0.Lease(ctx, "Campaign", name, req.Lease)
	if err != nil {
		return nil, err
	}
	c, err := s.enqueue(ctx, name, keyspace.OwnerKey(name, lease), val, lease)
	if err != nil {
		return nil, err
	}
	if _, err := s.g.Take(ctx, c); err != nil {
		return nil, err
	}
	// etcd answers with the header of the campaign transaction.
	return &epb.CampaignResponse{
		Header: c.Header,
		Leader: &epb.LeaderKey{Name: req.Name, Key: []byte(c.Key), Rev: c.Rev, Lease: int64(lease)},
	}, nil
}

// enqueue is concurrency.Election.Campaign's transaction, run detached as
// Lock's is, with its first read of the leader folded in: the oldest key
// under the prefix, read in the same transaction. concurrency reads it
// after the transaction (waitDeletes: is any key older than ours?); keys
// are never created with an older revision, so what that later read finds
// older was there at the transaction's revision too, and what the
// transaction finds older and is gone by then is found gone by the queue at
// once: the same decision, one request fewer.
func (s *Server) enqueue(ctx context.Context, name, key, val string, lease clientv3.LeaseID) (grant.Claim, error) {
	getLeader := clientv3.OpGet(keyspace.Prefix(name), clientv3.WithFirstCreate()...)
	resp, err := s.etcd.SendCreate(ctx, etcdio.Txn{
		If:     []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", 0)},
		Then:   []clientv3.Op{clientv3.OpPut(key, val, clientv3.WithLease(lease)), getLeader},
		Else:   []clientv3.Op{clientv3.OpGet(key), getLeader},
		Prefix: keyspace.Prefix(name),
	})
	if err != nil {
		return grant.Claim{}, err
	}
	c := grant.Claim{Service: grant.ServiceElection, Name: name, Key: key, Rev: resp.Header.Revision, Lease: lease,
		Header: resp.Header, Created: resp.Succeeded}
	if !resp.Succeeded {
		// Campaigning again with the same lease: keep the candidacy, update
		// its value as concurrency does.
		kv := resp.Responses[0].GetResponseRange().Kvs[0]
		c.Rev = kv.CreateRevision
		if string(kv.Value) != val {
			tctx, cancel := s.etcd.Detached(ctx)
			presp, err := s.etcd.For(tctx).Txn(tctx).
				If(clientv3.Compare(clientv3.CreateRevision(key), "=", c.Rev)).
				Then(clientv3.OpPut(key, val, clientv3.WithLease(lease))).
				Commit()
			cancel()
			if err == nil && !presp.Succeeded {
				err = errNotLeader
			}
			if err != nil {
				s.g.Abandon(key, c.Rev)
				return grant.Claim{}, err
			}
		}
	}
	// Leader at once if no older candidate exists; the read shows our key,
	// so it is also the ownership check. Otherwise wait in the queue.
	leader := resp.Responses[1].GetResponseRange().Kvs
	c.Free = len(leader) > 0 && string(leader[0].Key) == key && leader[0].CreateRevision == c.Rev
	return c, nil
}
