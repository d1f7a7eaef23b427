package semaphore

import (
	"context"
	"strconv"

	"github.com/coordproxy/coordproxy/answer"
	"github.com/coordproxy/coordproxy/etcdio"
	"github.com/coordproxy/coordproxy/grant"
	"github.com/coordproxy/coordproxy/keyspace"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Service implements coordproxy's SemaphoreService (proto/coordproxy/v1). It
// embeds the Unsafe interface so that an RPC added to the proto is a compile
// error here.
type Service struct {
	coordproxyv1.UnsafeSemaphoreServiceServer
	g    *grant.Granter
	etcd *etcdio.Etcd
}

// New returns the SemaphoreService: its transactions go to e, the wait
// after them to g.
func New(g *grant.Granter, e *etcdio.Etcd) *Service { return &Service{g: g, etcd: e} }

// Acquire takes one of name's limit places for req.Lease, waiting first come,
// first served while all are taken.
func (s *Service) Acquire(ctx context.Context, req *coordproxyv1.AcquireRequest) (*coordproxyv1.Held, error) {
	switch {
	case len(req.Name) == 0:
		return nil, grant.ErrNameMissing
	case req.Lease == 0:
		return nil, grant.ErrLeaseMissing
	case req.Limit < 1:
		return nil, errLimitInvalid
	}
	name, lease := string(req.Name), clientv3.LeaseID(req.Lease)
	c, err := s.enqueue(ctx, name, keyspace.OwnerKey(name, lease), lease, req.Limit)
	if err != nil {
		return nil, err
	}
	g, err := s.g.Take(ctx, c)
	if err != nil {
		return nil, err
	}
	return answer.Held(g, lease), nil
}

// enqueue is concurrency.Mutex's tryAcquire transaction with the limit as the
// value and the first limit keys read instead of the first one, run detached
// as Lock's is. Acquiring again with a lease that holds or waits is the same
// acquisition, as for Mutex.
//
// It also reads the two newest keys, so that every key is compared with the
// holders' and its predecessor's limit when it is created: a different
// limit, or a key of a lock or an election, is refused without reading the
// whole queue.
func (s *Service) enqueue(ctx context.Context, name, key string, lease clientv3.LeaseID, limit int64) (grant.Claim, error) {
	pfx := keyspace.Prefix(name)
	value := strconv.FormatInt(limit, 10)
	holders := clientv3.OpGet(pfx, clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend), clientv3.WithLimit(limit))
	newest := clientv3.OpGet(pfx, clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortDescend), clientv3.WithLimit(2))
	resp, err := s.etcd.SendCreate(ctx, etcdio.Txn{
		If:     []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", 0)},
		Then:   []clientv3.Op{clientv3.OpPut(key, value, clientv3.WithLease(lease)), holders, newest},
		Else:   []clientv3.Op{clientv3.OpGet(key), holders, newest},
		Prefix: pfx,
	})
	if err != nil {
		return grant.Claim{}, err
	}
	c := grant.Claim{Service: grant.ServiceSemaphore, Name: name, Key: key, Rev: resp.Header.Revision, Lease: lease,
		Header: resp.Header, Created: resp.Succeeded, Blockers: pfx, Allowed: limit}
	var seen []*mvccpb.KeyValue
	if !resp.Succeeded {
		own := resp.Responses[0].GetResponseRange().Kvs[0]
		c.Rev = own.CreateRevision
		seen = append(seen, own)
	}
	first := resp.Responses[1].GetResponseRange().Kvs
	seen = append(append(seen, first...), resp.Responses[2].GetResponseRange().Kvs...)
	for _, kv := range seen {
		if string(kv.Value) != value {
			if c.Created {
				s.g.RemoveNow(ctx, key, c.Rev)
			}
			return grant.Claim{}, errOtherLimit(name, kv, limit)
		}
	}
	for _, kv := range first {
		c.Free = c.Free || kv.CreateRevision == c.Rev
	}
	c.Wait = rankWait(key, c.Rev, int(limit))
	return c, nil
}

// Release deletes a semaphore key: only one of the form name/hex(lease) that
// is attached to that lease, as Unlock (with a fencing token, only that
// acquisition). A key already gone is success.
func (s *Service) Release(ctx context.Context, req *coordproxyv1.ReleaseRequest) (*coordproxyv1.ReleaseResponse, error) {
	key := string(req.Key)
	if key == "" {
		return nil, grant.ErrKeyMissing
	}
	_, lease, ok := keyspace.ParseOwnerKey(key)
	if !ok {
		return nil, errNotSemaphoreKey
	}
	hdr, err := s.g.Release(ctx, key, lease, req.FencingToken, errNotSemaphoreKey)
	if err != nil {
		return nil, err
	}
	return &coordproxyv1.ReleaseResponse{Header: answer.Header(hdr)}, nil
}

// Describe reads name's limit (from its keys' values; 0 when nobody holds or
// waits), the holders with their leases' TTLs, and the waiters in the order
// they will be granted.
func (s *Service) Describe(ctx context.Context, req *coordproxyv1.DescribeRequest) (*coordproxyv1.SemaphoreDescription, error) {
	if len(req.Name) == 0 {
		return nil, grant.ErrNameMissing
	}
	name := string(req.Name)
	// The limit decides how many keys hold, and is read before them: if the
	// name emptied and filled again with another limit in between, read again.
	for {
		limit, err := s.limit(ctx, name)
		if err != nil {
			return nil, err
		}
		hdr, held, waiters, waiting, err := answer.Describe(ctx, s.etcd, name, int(limit), req.Limit)
		if err != nil {
			return nil, err
		}
		if len(held) > 0 && string(held[0].Value) != strconv.FormatInt(limit, 10) ||
			len(held) == 0 && len(waiters) > 0 {
			continue
		}
		return &coordproxyv1.SemaphoreDescription{Header: hdr, Limit: limit, Holders: held, Waiters: waiters, Waiting: waiting}, nil
	}
}

// limit is the limit name's oldest key gives, 0 if there is none.
func (s *Service) limit(ctx context.Context, name string) (int64, error) {
	resp, err := answer.ReadQueue(ctx, s.etcd, name, 1)
	if err != nil || len(resp.Kvs) == 0 {
		return 0, err
	}
	limit, err := strconv.ParseInt(string(resp.Kvs[0].Value), 10, 64)
	if err != nil || limit < 1 {
		return 0, status.Errorf(codes.FailedPrecondition, "name %q is not a semaphore's: key %q has no limit (a lock or an election?)", name, resp.Kvs[0].Key)
	}
	return limit, nil
}
