package lockproxy

import (
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
)

// Locks implements coordproxy's own LockService (proto/coordproxy/v1): etcd's
// Lock with TryLock, a fencing token and Describe, on the same keys.
type Locks struct {
	coordproxyv1.UnimplementedLockServiceServer
	b *Backend
}

// NewLocks returns coordproxy's LockService over b.
func NewLocks(b *Backend) *Locks { return &Locks{b: b} }

// Semaphores implements coordproxy's SemaphoreService: up to a limit of
// holders per name, in the key layout of a lock.
type Semaphores struct {
	coordproxyv1.UnimplementedSemaphoreServiceServer
	b *Backend
}

// NewSemaphores returns coordproxy's SemaphoreService over b.
func NewSemaphores(b *Backend) *Semaphores { return &Semaphores{b: b} }

// RWLocks implements coordproxy's RWLockService with the keys of etcd's
// experimental/recipes RWMutex.
type RWLocks struct {
	coordproxyv1.UnimplementedRWLockServiceServer
	b *Backend
}

// NewRWLocks returns coordproxy's RWLockService over b.
func NewRWLocks(b *Backend) *RWLocks { return &RWLocks{b: b} }
