package authz

import (
	"context"
	"fmt"
	"sync"

	"github.com/coordproxy/coordproxy/keyspace"
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
// Cost: one etcd Put per grant; a replica remembers owners it has read, and
// forgets the owner of a lease revoked through it.

// LeaseRecordPrefix is where the owner records live.
const LeaseRecordPrefix = "__coordproxy/leases/"

func leaseRecord(lease int64) string { return fmt.Sprintf("%s%x", LeaseRecordPrefix, lease) }

// maxOwners bounds the owners a replica remembers.
const maxOwners = 1 << 17

type leaseOwners struct {
	mu     sync.Mutex
	owners map[int64]string // "" : no record
}

// leaseGranted writes the owner of a lease just granted for ctx's caller
// (etcdio's LeaseHooks.Granted).
func (a *Authorizer) leaseGranted(ctx context.Context, lease clientv3.LeaseID) error {
	if a.store.Policy() == nil {
		return nil
	}
	id := a.ids.of(ctx)
	if _, err := a.etcd.Own().Put(ctx, leaseRecord(int64(lease)), id, clientv3.WithLease(lease)); err != nil {
		return err
	}
	a.owners.remember(int64(lease), id)
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

// forget drops the owner of a lease revoked through this replica (etcdio's
// LeaseHooks.Revoked): its record went with it.
func (o *leaseOwners) forget(lease int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.owners, lease)
}

// mayUse tells whether identity may use lease under p.
func (a *Authorizer) mayUse(ctx context.Context, p *policy.Policy, identity string, lease int64) (bool, error) {
	a.owners.mu.Lock()
	owner, known := a.owners.owners[lease]
	a.owners.mu.Unlock()
	if !known {
		resp, err := a.etcd.Own().Get(ctx, leaseRecord(lease))
		if err != nil {
			return false, err
		}
		if len(resp.Kvs) > 0 {
			owner = string(resp.Kvs[0].Value)
		}
		a.owners.remember(lease, owner)
	}
	if owner == "" {
		return p.UnrecordedLeases, nil
	}
	return owner == identity, nil
}

// keyLease is the lease a lock or semaphore key names (name/hex(lease));
// 0 for another key.
func keyLease(key []byte) int64 {
	if _, lease, ok := keyspace.ParseOwnerKey(string(key)); ok {
		return int64(lease)
	}
	return 0
}

// storedLease is the lease key names, else the lease etcd has it on (an RW
// lock's key names none); 0 for a key that is not there.
func (a *Authorizer) storedLease(ctx context.Context, key []byte) (int64, error) {
	if l := keyLease(key); l != 0 || len(key) == 0 {
		return l, nil
	}
	resp, err := a.etcd.Own().Get(ctx, string(key))
	if err != nil || len(resp.Kvs) == 0 {
		return 0, err
	}
	return resp.Kvs[0].Lease, nil
}
