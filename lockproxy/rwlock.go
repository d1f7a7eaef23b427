package lockproxy

import (
	"context"
	"fmt"
	"strings"
	"time"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A read/write lock keeps the keys of etcd's experimental/recipes RWMutex:
// the name is the prefix given to recipe.NewRWMutex, which appends "/"
// (name "x" is NewRWMutex(s, "x")); a reader's key is
// name+"/read/"+UnixNano, a writer's name+"/write/"+UnixNano, attached to
// the caller's lease. A reader holds once
// no writer's key is older than its own, a writer once no key under the name
// is; the proxy waits for that on the name's shared watch where the recipe
// watches the blocking key itself.

// RLock waits until no writer that came earlier holds or waits.
func (s *RWLocks) RLock(ctx context.Context, req *coordproxyv1.RWLockRequest) (*coordproxyv1.Held, error) {
	return s.lock(ctx, req, false)
}

// WLock waits until every earlier reader and writer is gone.
func (s *RWLocks) WLock(ctx context.Context, req *coordproxyv1.RWLockRequest) (*coordproxyv1.Held, error) {
	return s.lock(ctx, req, true)
}

func (s *RWLocks) lock(ctx context.Context, req *coordproxyv1.RWLockRequest, write bool) (*coordproxyv1.Held, error) {
	switch {
	case len(req.Name) == 0:
		return nil, ErrNameMissing
	case req.Lease == 0:
		return nil, ErrLeaseMissing
	}
	pfx, lease := Prefix(string(req.Name)), clientv3.LeaseID(req.Lease)
	// RWMutex.RLock waits on pfx+"write", Lock on pfx: the same prefixes.
	role, blockPrefix := "read", pfx+"write"
	if write {
		role, blockPrefix = "write", pfx
	}
	k, err := s.create(ctx, pfx+role, lease, blockPrefix)
	if err != nil {
		return nil, err
	}
	hdr := k.header
	if !k.free {
		blocks := func(key []byte) bool { return strings.HasPrefix(string(key), blockPrefix) }
		hdr, err = s.b.waitGrant(ctx, turn{
			service: ServiceRWLock,
			prefix:  pfx,
			key:     k.key,
			rev:     k.rev,
			wait: func(ctx context.Context, q *Queue) error {
				if write {
					return q.WaitTurn(ctx, nil, k.key, k.rev)
				}
				return q.WaitNoneBefore(ctx, k.key, k.rev, blocks)
			},
			blockPrefix: blockPrefix,
			allowed:     1,
		})
		if err != nil {
			return nil, err
		}
	} else if ctx.Err() != nil {
		// The client left while we took the lock for it.
		s.b.Abandon(k.key, k.rev)
		return nil, ctx.Err()
	}
	s.b.Hold(ServiceRWLock, string(req.Name), k.key, k.rev)
	return held(grant{hdr, k.key, k.rev}, lease), nil
}

type rwKey struct {
	key    string
	rev    int64
	free   bool // nothing blocked key when it was created
	header *pb.ResponseHeader
}

// create is the recipe's newUniqueEphemeralKey: put prefix/UnixNano if its
// version is 0, under lease, and another number on a collision. The same
// transaction also counts the keys under blockPrefix, so that a lock nobody
// contends is granted in one round trip. It runs detached, as Lock's acquire
// does; an Else read tells a collision from this call's own key created by an
// attempt whose answer was lost.
func (s *RWLocks) create(ctx context.Context, prefix string, lease clientv3.LeaseID, blockPrefix string) (rwKey, error) {
	for {
		key := fmt.Sprintf("%s/%v", prefix, time.Now().UnixNano())
		resp, err := s.b.Acquire(ctx, func(ctx context.Context) (*clientv3.TxnResponse, error) {
			return s.b.For(ctx).Txn(ctx).
				If(clientv3.Compare(clientv3.Version(key), "=", 0)).
				Then(clientv3.OpPut(key, "", clientv3.WithLease(lease)),
					clientv3.OpGet(blockPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())).
				Else(clientv3.OpGet(key, clientv3.WithKeysOnly())).
				Commit()
		})
		if err != nil {
			return rwKey{}, err
		}
		if resp.Succeeded {
			before := resp.Responses[1].GetResponseRange().Count
			if strings.HasPrefix(key, blockPrefix) {
				before-- // a writer's own key
			}
			return rwKey{key: key, rev: resp.Header.Revision, free: before == 0, header: resp.Header}, nil
		}
		if kv := resp.Responses[0].GetResponseRange().Kvs[0]; kv.Lease == int64(lease) {
			// Our own put, applied by an attempt whose answer was lost.
			return rwKey{key: key, rev: kv.CreateRevision, header: resp.Header}, nil
		}
		if err := ctx.Err(); err != nil {
			return rwKey{}, err
		}
	}
}

// Unlock deletes a reader's or writer's key: only a key of the recipe's form
// that is attached to a lease, since anything else is someone's data. A key
// already gone is success.
func (s *RWLocks) Unlock(ctx context.Context, req *coordproxyv1.UnlockRequest) (*coordproxyv1.UnlockResponse, error) {
	key := string(req.Key)
	if key == "" {
		return nil, errKeyMissing
	}
	if !isRWLockKey(key) {
		return nil, errNotRWLockKey
	}
	hdr, err := s.b.release(ctx, key, clientv3.Compare(clientv3.LeaseValue(key), ">", 0), errNotRWLockKey)
	if err != nil {
		return nil, err
	}
	return &coordproxyv1.UnlockResponse{Header: Header(hdr)}, nil
}

// isRWLockKey: <anything>read/<digits> or <anything>write/<digits>.
func isRWLockKey(key string) bool {
	i := strings.LastIndexByte(key, '/')
	if i < 0 || i == len(key)-1 {
		return false
	}
	for _, c := range key[i+1:] {
		if c < '0' || c > '9' {
			return false
		}
	}
	return strings.HasSuffix(key[:i], "read") || strings.HasSuffix(key[:i], "write")
}
