package electionproxy

import (
	"github.com/coordproxy/coordproxy/etcdio"
	"github.com/coordproxy/coordproxy/grant"
	"github.com/coordproxy/coordproxy/lease0"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
)

// elections is what both services share.
type elections struct {
	g    *grant.Granter
	etcd *etcdio.Etcd   // its own transactions
	l0   *lease0.Leases // etcd's Campaign with lease 0
}

// Server implements etcd's v3electionpb.Election service. It embeds the
// Unsafe interface so that an RPC added by an etcd upgrade is a compile
// error here, not a silent Unimplemented on the wire.
type Server struct {
	epb.UnsafeElectionServer
	elections
}

// New returns the Election service: its transactions go to e, the wait
// after them to g, a lease-0 call's lease comes from l0.
func New(g *grant.Granter, e *etcdio.Etcd, l0 *lease0.Leases) *Server {
	return &Server{elections: elections{g, e, l0}}
}

// Elections implements coordproxy's own ElectionService (proto/coordproxy/v1):
// Describe, and an Observe that also reports the loss of the leader.
type Elections struct {
	coordproxyv1.UnsafeElectionServiceServer
	elections
}

// NewElections returns coordproxy's ElectionService, as New.
func NewElections(g *grant.Granter, e *etcdio.Etcd, l0 *lease0.Leases) *Elections {
	return &Elections{elections: elections{g, e, l0}}
}
