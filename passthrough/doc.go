// Package passthrough serves etcd's KV, Watch and Lease services, and
// Maintenance.Status and Auth.Authenticate, by passing them to etcd through
// the proxy's etcd access (package etcdio: its namespace, request limiter and
// the caller's token), so that fenced writes, etcdctl and concurrency.Mutex
// users need only the proxy's address. One file per etcd service; each server
// embeds etcd's Unsafe…Server and writes out the RPCs it does not serve
// (notServed), so that an RPC added by an etcd upgrade is a compile error
// here instead of a silent Unimplemented on the wire.
package passthrough

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// notServed is the answer of an RPC the proxy does not pass through, with
// the text gRPC's generated Unimplemented servers give. README, "Not
// served", lists them and why.
func notServed(method string) error {
	return status.Errorf(codes.Unimplemented, "method %s not implemented", method)
}
