package proxy

import (
	"context"

	"github.com/coordproxy/coordproxy/authz"
	"github.com/coordproxy/coordproxy/etcdio"
	"google.golang.org/grpc/peer"
)

// Every call's etcd requests belong to the caller's flow, at its method's
// priority (etcdio/flow.go: how slots to etcd are shared). The flow is the
// caller's identity (package authz: certificate or etcd user), else its
// connection; the JSON gateway's anonymous callers share one.

// priorities are the methods that do not go at etcdio.PriorityPass.
var priorities = map[string]etcdio.Priority{
	"/v3lockpb.Lock/Unlock":                    etcdio.PriorityRelease,
	"/v3electionpb.Election/Resign":            etcdio.PriorityRelease,
	"/coordproxy.v1.LockService/Unlock":        etcdio.PriorityRelease,
	"/coordproxy.v1.SemaphoreService/Release":  etcdio.PriorityRelease,
	"/coordproxy.v1.RWLockService/Unlock":      etcdio.PriorityRelease,
	"/etcdserverpb.Lease/LeaseRevoke":          etcdio.PriorityRelease,
	"/coordproxy.v1.SessionService/KeepAlive":  etcdio.PriorityKeep,
	"/etcdserverpb.Lease/LeaseKeepAlive":       etcdio.PriorityKeep,
	"/v3lockpb.Lock/Lock":                      etcdio.PriorityAcquire,
	"/v3electionpb.Election/Campaign":          etcdio.PriorityAcquire,
	"/v3electionpb.Election/Proclaim":          etcdio.PriorityAcquire,
	"/v3electionpb.Election/Leader":            etcdio.PriorityAcquire,
	"/v3electionpb.Election/Observe":           etcdio.PriorityAcquire,
	"/coordproxy.v1.LockService/Lock":          etcdio.PriorityAcquire,
	"/coordproxy.v1.LockService/TryLock":       etcdio.PriorityAcquire,
	"/coordproxy.v1.LockService/Describe":      etcdio.PriorityAcquire,
	"/coordproxy.v1.SemaphoreService/Acquire":  etcdio.PriorityAcquire,
	"/coordproxy.v1.SemaphoreService/Describe": etcdio.PriorityAcquire,
	"/coordproxy.v1.RWLockService/RLock":       etcdio.PriorityAcquire,
	"/coordproxy.v1.RWLockService/WLock":       etcdio.PriorityAcquire,
	"/coordproxy.v1.ElectionService/Describe":  etcdio.PriorityAcquire,
	"/coordproxy.v1.ElectionService/Observe":   etcdio.PriorityAcquire,
}

// flowContext is ctx whose etcd requests belong to the flow of the caller
// id at method's priority.
func (s *Server) flowContext(ctx context.Context, id, method string) context.Context {
	p, ok := priorities[method]
	if !ok {
		p = etcdio.PriorityPass
	}
	return etcdio.WithFlow(ctx, flowOf(ctx, id), p)
}

// flowOf is the caller's identity id (an etcdio.Tenant: its transactions
// have group-commit batches of their own), else its connection (the
// address gRPC keeps for it: one value for every call on it); nothing is
// built per call.
func flowOf(ctx context.Context, id string) any {
	if id != authz.Anonymous {
		return etcdio.Tenant(id)
	}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr
	}
	return nil
}
