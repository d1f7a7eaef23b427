package lockproxy

import (
	"github.com/coordproxy/coordproxy/etcdio"
	"github.com/coordproxy/coordproxy/grant"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
)

// locks is what both services do: they differ in their messages only.
type locks struct {
	g    *grant.Granter
	etcd *etcdio.Etcd
}

// Server implements etcd's v3lockpb.Lock service. It embeds the Unsafe
// interface so that an RPC added by an etcd upgrade is a compile error here,
// not a silent Unimplemented on the wire.
type Server struct {
	v3lockpb.UnsafeLockServer
	locks
}

// New returns the Lock service over g.
func New(g *grant.Granter) *Server { return &Server{locks: locks{g, g.Etcd()}} }

// Locks implements coordproxy's own LockService (proto/coordproxy/v1):
// etcd's Lock with TryLock, a fencing token and Describe, on the same keys.
type Locks struct {
	coordproxyv1.UnsafeLockServiceServer
	locks
}

// NewLocks returns coordproxy's LockService over g.
func NewLocks(g *grant.Granter) *Locks { return &Locks{locks: locks{g, g.Etcd()}} }
