package electionproxy

import (
	"context"

	"github.com/coordproxy/coordproxy/lockproxy"
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
	lease, err := s.b.Lease(ctx, "Campaign", name, req.Lease)
	if err != nil {
		return nil, err
	}
	key := lockproxy.OwnerKey(name, lease)

	resp, err := s.b.Acquire(ctx, func(ctx context.Context) (*clientv3.TxnResponse, error) {
		return s.b.For(ctx).Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, val, clientv3.WithLease(lease))).
			Else(clientv3.OpGet(key)).
			Commit()
	})
	if err != nil {
		return nil, err
	}
	rev := resp.Header.Revision
	if !resp.Succeeded {
		// Campaigning again with the same lease: keep the candidacy, update
		// its value as concurrency does.
		kv := resp.Responses[0].GetResponseRange().Kvs[0]
		rev = kv.CreateRevision
		if string(kv.Value) != val {
			tctx, cancel := s.b.Detached(ctx)
			presp, err := s.b.For(tctx).Txn(tctx).
				If(clientv3.Compare(clientv3.CreateRevision(key), "=", rev)).
				Then(clientv3.OpPut(key, val, clientv3.WithLease(lease))).
				Commit()
			cancel()
			if err == nil && !presp.Succeeded {
				err = errNotLeader
			}
			if err != nil {
				s.b.Abandon(key, rev)
				return nil, err
			}
		}
	}
	// Leader at once if no older candidate exists, as concurrency's own
	// first read finds; the read is linearizable and shows our key, so it is
	// also the ownership check. Otherwise wait in the queue.
	var first *clientv3.GetResponse
	s.b.BeforeWait(ctx, func() { first, err = s.b.For(ctx).Get(ctx, lockproxy.Prefix(name), clientv3.WithFirstCreate()...) })
	if err != nil {
		s.b.Abandon(key, rev)
		return nil, err
	}
	if kvs := first.Kvs; len(kvs) == 0 || string(kvs[0].Key) != key || kvs[0].CreateRevision != rev {
		if _, err := s.b.Wait(ctx, lockproxy.ServiceElection, name, key, rev); err != nil {
			return nil, err
		}
	}
	s.b.Hold(lockproxy.ServiceElection, name, key, rev)
	// etcd answers with the header of the campaign transaction.
	return &epb.CampaignResponse{
		Header: resp.Header,
		Leader: &epb.LeaderKey{Name: req.Name, Key: []byte(key), Rev: rev, Lease: int64(lease)},
	}, nil
}
