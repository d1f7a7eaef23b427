package lockproxy

import "go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"

// Server implements etcd's v3lockpb.Lock service.
type Server struct {
	v3lockpb.UnimplementedLockServer
	b *Backend
}

// New returns the Lock service over b.
func New(b *Backend) *Server { return &Server{b: b} }
