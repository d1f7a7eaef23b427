package electionproxy

import (
	"github.com/coordproxy/coordproxy/etcdio"
	"github.com/coordproxy/coordproxy/grant"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
)

// elections is what both services share.
type elections struct {
	g    *grant.Granter
	etcd *etcdio.Etcd
}

// Server implements etcd's v3electionpb.Election service. It embeds the
// Unsafe interface so that an RPC added by an etcd upgrade is a compile
// error here, not a silent Unimplemented on the wire.
type Server struct {
	epb.UnsafeElectionServer
	elections
}

// New returns the Election service over g.
func New(g *grant.Granter) *Server { return &Server{elections: elections{g, g.Etcd()}} }

// Elections implements coordproxy's own ElectionService (proto/coordproxy/v1):
// Describe, and an Observe that also reports the loss of the leader.
type Elections struct {
	coordproxyv1.UnsafeElectionServiceServer
	elections
}

// NewElections returns coordproxy's ElectionService over g.
func NewElections(g *grant.Granter) *Elections { return &Elections{elections: elections{g, g.Etcd()}} }
