package proxy

import (
	"context"
	"fmt"
	"sync"

	"github.com/coordproxy/coordproxy/grant"
	"github.com/coordproxy/coordproxy/policy"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
)

// Leases belong to their taker while a policy is in force: a lease granted
// through any replica (LeaseGrant, a session, a call with lease 0) gets an
// owner record in etcd attached to the lease itself, so that it vanishes
// with it and every replica, restarted or not, reads the same owner:
// LeaseRecordPrefix + hex(lease) = the granting identity. A call that uses a
// lease — holds keys on it (Lock, Campaign, Acquire, RLock/WLock, TryLock),
// keeps it alive, revokes it, reads its TTL, resumes a session on it, or
// releases, resigns or proclaims with a key on it — is refused unless the
// caller owns it; a lease without a record (granted straight at etcd, or
// while no policy was in force) follows the policy's leases.unrecorded.
// Cost: one etcd Put per grant; a replica remembers owners it has read.

// LeaseRecordPrefix is where the owner records live.
const LeaseRecordPrefix = "__coordproxy/leases/"

func leaseRecord(lease int64) string { return fmt.Sprintf("%s%x", LeaseRecordPrefix, lease) }

// maxOwners bounds the owners a replica remembers.
const maxOwners = 1 << 17

type leaseOwners struct {
	mu     sync.Mutex
	owners map[int64]string // "" : no record
}

// record writes the owner of a lease just granted for ctx's caller.
func (s *Server) recordLease(ctx context.Context, lease clientv3.LeaseID) error {
	if s.policy.Policy() == nil {
		return nil
	}
	id := s.ids.of(ctx)
	if _, err := s.access.Own().Put(ctx, leaseRecord(int64(lease)), id, clientv3.WithLease(lease)); err != nil {
		return err
	}
	s.owners.remember(int64(lease), id)
	return nil
}

func (o *leaseOwners) remember(lease int64, owner string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.owners == nil || len(o.owners) >= maxOwners {
		o.owners = map[int64]string{}
	}
	o.owners[lease] = owner
}

func (o *leaseOwners) forget(lease int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.owners, lease)
}

// mayUse tells whether identity may use lease under p.
func (s *Server) mayUse(ctx context.Context, p *policy.Policy, identity string, lease int64) (bool, error) {
	s.owners.mu.Lock()
	owner, known := s.owners.owners[lease]
	s.owners.mu.Unlock()
	if !known {
		resp, err := s.access.Own().Get(ctx, leaseRecord(lease))
		if err != nil {
			return false, err
		}
		if len(resp.Kvs) > 0 {
			owner = string(resp.Kvs[0].Value)
		}
		s.owners.remember(lease, owner)
	}
	if owner == "" {
		return p.UnrecordedLeases, nil
	}
	return owner == identity, nil
}

// leaseOf is the lease a request uses, 0 for none.
func leaseOf(req any) int64 {
	switch r := req.(type) {
	case *v3lockpb.LockRequest:
		return r.Lease
	case *v3lockpb.UnlockRequest:
		return keyLease(r.Key)
	case *v3electionpb.CampaignRequest:
		return r.Lease
	case *v3electionpb.ProclaimRequest:
		return r.GetLeader().GetLease()
	case *v3electionpb.ResignRequest:
		return r.GetLeader().GetLease()
	case *coordproxyv1.LockRequest:
		return r.Lease
	case *coordproxyv1.UnlockRequest:
		return keyLease(r.Key)
	case *coordproxyv1.AcquireRequest:
		return r.Lease
	case *coordproxyv1.ReleaseRequest:
		return keyLease(r.Key)
	case *coordproxyv1.RWLockRequest:
		return r.Lease
	case *coordproxyv1.SessionRequest:
		return r.Lease
	case *pb.LeaseRevokeRequest:
		return r.ID
	case *pb.LeaseTimeToLiveRequest:
		return r.ID
	case *pb.LeaseKeepAliveRequest:
		return r.ID
	}
	return 0
}

// keyLease is the lease a lock or semaphore key names (name/hex(lease)); 0
// for another key (an RW lock's key names none: its release is decided by
// the name's prefix only).
func keyLease(key []byte) int64 {
	if _, lease, ok := grant.ParseOwnerKey(string(key)); ok {
		return int64(lease)
	}
	return 0
}
