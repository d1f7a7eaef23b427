// Package authz decides who may do what through coordproxy: it owns the
// caller's identity (identity.go), the verb and keys of every request,
// looked up by the call's gRPC full method name (scope.go), who owns each
// lease (leases.go), and the refusals, their log line and their counter
// (authorizer.go). The policy itself, its rules and its file, is package
// policy's; this package applies it.
//
// Where it sits in a call: the proxy's edge (proxy/edge.go) asks
// Authorizer.Unary of every unary call, before the call's handler runs, and
// wraps every stream with Authorizer.Stream, which decides the stream's
// first message (each message of a lease keep-alive stream, each watch a
// Watch stream creates). Nothing below the edge (the services, grant,
// passthrough, etcdio) knows of the policy. The one thing that must happen
// elsewhere, the owner record of a lease granted through the proxy, is
// etcdio's LeaseHooks.Granted, which New sets.
package authz
