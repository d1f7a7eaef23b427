package lockproxy

import (
	"github.com/coordproxy/coordproxy/etcdio"
	"github.com/coordproxy/coordproxy/grant"
	"github.com/coordproxy/coordproxy/lease0"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
)

// locks is what both services do: they differ in their messages only.
type locks struct {
	g    *grant.Granter
	etcd *etcdio.Etcd   // its own transactions
	l0   *lease0.Leases // etcd's Lock with lease 0
}

// Server implements etcd's v3lockpb.Lock service. It embeds the Unsafe
// interface so that an RPC added by an etcd upgrade is a compile error here,
// not a silent Unimplemented on the wire.
type Server struct {
	v3lockpb.UnsafeLockServer
	locks
}

// New returns the Lock service: its transactions go to e, the wait after
// them to g, a lease-0 call's lease comes from l0.
func New(g *grant.Granter, e *etcdio.Etcd, l0 *lease0.Leases) *Server {
	return &Server{locks: locks{g, e, l0}}
}

// Locks implements coordproxy's own LockService (proto/coordproxy/v1):
// etcd's Lock with TryLock, a fencing token and Describe, on the same keys.
type Locks struct {
	coordproxyv1.UnsafeLockServiceServer
	locks
}

// NewLocks returns coordproxy's LockService, as New.
func NewLocks(g *grant.Granter, e *etcdio.Etcd, l0 *lease0.Leases) *Locks {
	return &Locks{locks: locks{g, e, l0}}
}
