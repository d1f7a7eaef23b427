package electionproxy

import (
	"github.com/coordproxy/coordproxy/lockproxy"
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
)

// Server implements etcd's v3electionpb.Election service.
type Server struct {
	epb.UnimplementedElectionServer
	b *lockproxy.Backend
}

// New returns the Election service over b.
func New(b *lockproxy.Backend) *Server { return &Server{b: b} }
