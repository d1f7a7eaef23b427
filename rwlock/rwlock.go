package rwlock

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/coordproxy/coordproxy/answer"
	"github.com/coordproxy/coordproxy/etcdio"
	"github.com/coordproxy/coordproxy/grant"
	"github.com/coordproxy/coordproxy/keyspace"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"github.com/coordproxy/coordproxy/queue"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Service implements coordproxy's RWLockService. It embeds the Unsafe
// interface so that an RPC added to the proto is a compile error here.
type Service struct {
	coordproxyv1.UnsafeRWLockServiceServer
	g    *grant.Granter
	etcd *etcdio.Etcd
}

// New returns the RWLockService: its transactions go to e, the wait after
// them to g.
func New(g *grant.Granter, e *etcdio.Etcd) *Service { return &Service{g: g, etcd: e} }

var errNotRWLockKey = status.Error(codes.InvalidArgument,
	`"key" field is not a read/write lock key: want <name>/read/<number> or <name>/write/<number> of a key attached to a lease`)

// RLock waits until no writer that came earlier holds or waits.
func (s *Service) RLock(ctx context.Context, req *coordproxyv1.RWLockRequest) (*coordproxyv1.Held, error) {
	return s.lock(ctx, req, false)
}

// WLock waits until every earlier reader and writer is gone.
func (s *Service) WLock(ctx context.Context, req *coordproxyv1.RWLockRequest) (*coordproxyv1.Held, error) {
	return s.lock(ctx, req, true)
}

func (s *Service) lock(ctx context.Context, req *coordproxyv1.RWLockRequest, write bool) (*coordproxyv1.Held, error) {
	switch {
	case len(req.Name) == 0:
		return nil, grant.ErrNameMissing
	case req.Lease == 0:
		return nil, grant.ErrLeaseMissing
	}
	name, lease := string(req.Name), clientv3.LeaseID(req.Lease)
	pfx := keyspace.Prefix(name)
	// RWMutex.RLock waits on pfx+"write", Lock on pfx: the same prefixes.
	role, blockers := "read", pfx+"write"
	if write {
		role, blockers = "write", pfx
	}
	c, err := s.enqueue(ctx, name, pfx+role, lease, blockers)
	if err != nil {
		return nil, err
	}
	if !write {
		c.Wait = readerWait(c.Key, c.Rev, blockers)
	}
	g, err := s.g.Take(ctx, c)
	if err != nil {
		return nil, err
	}
	return answer.Held(g, lease), nil
}

// enqueue is the recipe's newUniqueEphemeralKey: put prefix/UnixNano if its
// version is 0, under lease, and another number on a collision. The same
// transaction also counts the keys under blockers, so that a lock nobody
// contends is granted in one round trip. It runs detached, as Lock's does;
// an Else read tells a collision from this call's own key created by an
// attempt whose answer was lost.
func (s *Service) enqueue(ctx context.Context, name, prefix string, lease clientv3.LeaseID, blockers string) (grant.Claim, error) {
	for {
		key := fmt.Sprintf("%s/%v", prefix, time.Now().UnixNano())
		resp, err := s.etcd.SendCreate(ctx, etcdio.Txn{
			If: []clientv3.Cmp{clientv3.Compare(clientv3.Version(key), "=", 0)},
			Then: []clientv3.Op{clientv3.OpPut(key, "", clientv3.WithLease(lease)),
				clientv3.OpGet(blockers, clientv3.WithPrefix(), clientv3.WithCountOnly())},
			Else:   []clientv3.Op{clientv3.OpGet(key, clientv3.WithKeysOnly())},
			Prefix: keyspace.Prefix(name),
		})
		if err != nil {
			return grant.Claim{}, err
		}
		c := grant.Claim{Service: grant.ServiceRWLock, Name: name, Key: key, Lease: lease, Header: resp.Header,
			Blockers: blockers, Allowed: 1}
		if resp.Succeeded {
			before := resp.Responses[1].GetResponseRange().Count
			if strings.HasPrefix(key, blockers) {
				before-- // a writer's own key
			}
			c.Rev, c.Created, c.Free = resp.Header.Revision, true, before == 0
			return c, nil
		}
		if kv := resp.Responses[0].GetResponseRange().Kvs[0]; kv.Lease == int64(lease) {
			// Our own put, applied by an attempt whose answer was lost.
			c.Rev = kv.CreateRevision
			return c, nil
		}
		if err := ctx.Err(); err != nil {
			return grant.Claim{}, err
		}
	}
}

// readerWait blocks until, as the shared watch sees it, no writer's key
// (under blockers) has a create revision below rev: the condition of
// recipes.RWMutex's waitOnLastRev loop. Like the recipe it watches the last
// such key only: the ones before it cannot all be gone while it stays. (A
// writer waits for every earlier key: the queue's WaitTurn.)
func readerWait(key string, rev int64, blockers string) func(ctx context.Context, stop <-chan struct{}, q *queue.Queue) error {
	return func(ctx context.Context, stop <-chan struct{}, q *queue.Queue) error {
		return q.Wait(ctx, stop, queue.ForKey(key, rev, func(v queue.View, watch []string) ([]string, bool) {
			for i := v.Before(rev) - 1; i >= 0; i-- {
				if k := v.At(i).Key; strings.HasPrefix(string(k), blockers) {
					return append(watch, key, string(k)), false
				}
			}
			return nil, true
		}))
	}
}

// Unlock deletes a reader's or writer's key: only a key of the recipe's form
// that is attached to a lease, since anything else is someone's data (with a
// fencing token, only that acquisition). A key already gone is success.
func (s *Service) Unlock(ctx context.Context, req *coordproxyv1.UnlockRequest) (*coordproxyv1.UnlockResponse, error) {
	key := string(req.Key)
	if key == "" {
		return nil, grant.ErrKeyMissing
	}
	if !isRWLockKey(key) {
		return nil, errNotRWLockKey
	}
	hdr, err := s.g.Release(ctx, key, 0, req.FencingToken, errNotRWLockKey)
	if err != nil {
		return nil, err
	}
	return &coordproxyv1.UnlockResponse{Header: answer.Header(hdr)}, nil
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
