package proxy

import (
	"context"
	"fmt"
	"sync"

	"github.com/coordproxy/coordproxy/grant"
	"github.com/coordproxy/coordproxy/policy"
	clientv3 "go.etcd.io/etcd/client/v3"
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

// recordLease writes the owner of a lease just granted for ctx's caller.
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

// keyLease is the lease a lock or semaphore key names (name/hex(lease)); 0
// for another key (an RW lock's key names none: scope has its lease read).
func keyLease(key []byte) int64 {
	if _, lease, ok := grant.ParseOwnerKey(string(key)); ok {
		return int64(lease)
	}
	return 0
}
