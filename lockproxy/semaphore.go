package lockproxy

import (
	"context"
	"strconv"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A semaphore keeps a lock's key layout: lease's key is name/hex(lease),
// attached to the lease, its value the limit in decimal. The first limit keys
// by create revision hold; the others wait in create-revision order.

// errOtherLimit: name's keys say another limit, or belong to a lock or an
// election. Holders counted by different limits would let too many in.
func errOtherLimit(name string, kv *mvccpb.KeyValue, limit int64) error {
	if other, err := strconv.ParseInt(string(kv.Value), 10, 64); err == nil && other >= 1 {
		return status.Errorf(codes.FailedPrecondition, "semaphore %q is in use with limit %d, not %d", name, other, limit)
	}
	return status.Errorf(codes.FailedPrecondition, "name %q is in use with another limit: key %q is not a semaphore's (a lock or an election?)", name, kv.Key)
}

// Acquire takes one of name's limit places for req.Lease, waiting first come,
// first served while all are taken.
func (s *Semaphores) Acquire(ctx context.Context, req *coordproxyv1.AcquireRequest) (*coordproxyv1.Held, error) {
	switch {
	case len(req.Name) == 0:
		return nil, ErrNameMissing
	case req.Lease == 0:
		return nil, ErrLeaseMissing
	case req.Limit < 1:
		return nil, errLimitInvalid
	}
	name, lease := string(req.Name), clientv3.LeaseID(req.Lease)
	key := OwnerKey(name, lease)
	a, err := s.acquire(ctx, name, key, lease, req.Limit)
	if err != nil {
		return nil, err
	}
	hdr := a.header
	if !a.owner {
		hdr, err = s.b.waitGrant(ctx, turn{
			service: ServiceSemaphore,
			prefix:  Prefix(name),
			key:     key,
			rev:     a.rev,
			wait: func(ctx context.Context, q *Queue) error {
				return q.WaitRank(ctx, key, a.rev, int(req.Limit))
			},
			blockPrefix: Prefix(name),
			allowed:     req.Limit,
		})
		if err != nil {
			return nil, err
		}
	} else if ctx.Err() != nil && a.created {
		// The client left while we took the place for it.
		s.b.Abandon(key, a.rev)
		return nil, ctx.Err()
	}
	s.b.Hold(ServiceSemaphore, name, key, a.rev)
	return held(grant{hdr, key, a.rev}, lease), nil
}

// acquire is concurrency.Mutex's tryAcquire transaction with the limit as the
// value and the first limit keys read instead of the first one, run detached
// as Lock's is. Acquiring again with a lease that holds or waits is the same
// acquisition, as for Mutex.
//
// It also reads the two newest keys, so that every key is compared with the
// holders' and its predecessor's limit when it is created: a different
// limit, or a key of a lock or an election, is refused without reading the
// whole queue.
func (s *Semaphores) acquire(ctx context.Context, name, key string, lease clientv3.LeaseID, limit int64) (acquisition, error) {
	pfx := Prefix(name)
	value := strconv.FormatInt(limit, 10)
	holders := clientv3.OpGet(pfx, clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend), clientv3.WithLimit(limit))
	newest := clientv3.OpGet(pfx, clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortDescend), clientv3.WithLimit(2))
	resp, err := s.b.Acquire(ctx, func(ctx context.Context) (*clientv3.TxnResponse, error) {
		return s.b.For(ctx).Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, value, clientv3.WithLease(lease)), holders, newest).
			Else(clientv3.OpGet(key), holders, newest).
			Commit()
	})
	if err != nil {
		return acquisition{}, err
	}
	a := acquisition{rev: resp.Header.Revision, created: resp.Succeeded, header: resp.Header}
	var seen []*mvccpb.KeyValue
	if !resp.Succeeded {
		own := resp.Responses[0].GetResponseRange().Kvs[0]
		a.rev = own.CreateRevision
		seen = append(seen, own)
	}
	first := resp.Responses[1].GetResponseRange().Kvs
	seen = append(append(seen, first...), resp.Responses[2].GetResponseRange().Kvs...)
	for _, kv := range seen {
		if string(kv.Value) != value {
			if a.created {
				s.b.removeNow(ctx, key, a.rev)
			}
			return acquisition{}, errOtherLimit(name, kv, limit)
		}
	}
	for _, kv := range first {
		a.owner = a.owner || kv.CreateRevision == a.rev
	}
	return a, nil
}

// Release deletes a semaphore key: only one of the form name/hex(lease) that
// is attached to that lease, as Unlock. A key already gone is success.
func (s *Semaphores) Release(ctx context.Context, req *coordproxyv1.ReleaseRequest) (*coordproxyv1.ReleaseResponse, error) {
	key := string(req.Key)
	if key == "" {
		return nil, errKeyMissing
	}
	_, lease, ok := ParseOwnerKey(key)
	if !ok {
		return nil, errNotSemaphoreKey
	}
	hdr, err := s.b.release(ctx, key, clientv3.Compare(clientv3.LeaseValue(key), "=", lease), errNotSemaphoreKey)
	if err != nil {
		return nil, err
	}
	return &coordproxyv1.ReleaseResponse{Header: Header(hdr)}, nil
}

// Describe reads name's limit (from its keys' values; 0 when nobody holds or
// waits), the holders with their leases' TTLs, and the waiters in the order
// they will be granted.
func (s *Semaphores) Describe(ctx context.Context, req *coordproxyv1.DescribeRequest) (*coordproxyv1.SemaphoreDescription, error) {
	if len(req.Name) == 0 {
		return nil, ErrNameMissing
	}
	name := string(req.Name)
	// The limit decides how many keys hold, and is read before them: if the
	// name emptied and filled again with another limit in between, read again.
	for {
		limit, err := s.limit(ctx, name)
		if err != nil {
			return nil, err
		}
		hdr, held, waiters, waiting, err := s.b.Describe(ctx, name, int(limit), req.Limit)
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
func (s *Semaphores) limit(ctx context.Context, name string) (int64, error) {
	resp, err := s.b.ReadQueue(ctx, name, 1)
	if err != nil || len(resp.Kvs) == 0 {
		return 0, err
	}
	limit, err := strconv.ParseInt(string(resp.Kvs[0].Value), 10, 64)
	if err != nil || limit < 1 {
		return 0, status.Errorf(codes.FailedPrecondition, "name %q is not a semaphore's: key %q has no limit (a lock or an election?)", name, resp.Kvs[0].Key)
	}
	return limit, nil
}
