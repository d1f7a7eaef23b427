package grant

import (
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Errors every primitive shares. Where etcd defines the situation they are
// etcd's own values (concurrency), so that the code and text on the wire are
// etcd's; the others are for input etcd would accept and then misbehave on.
var (
	// ErrSessionExpired: the caller's key is gone (lease expired or
	// revoked, key deleted) before it was granted; etcd's Lock answers so.
	ErrSessionExpired = concurrency.ErrSessionExpired

	// ErrNameMissing: an empty name makes the prefix "/", which overlaps every
	// lock and election whose name starts with "/".
	ErrNameMissing = status.Error(codes.InvalidArgument, `"name" field must be provided`)

	// ErrLeaseMissing: coordproxy's own API never grants a lease for the
	// caller (etcd's Lock grants one that nobody keeps alive).
	ErrLeaseMissing = status.Error(codes.InvalidArgument,
		`"lease" field must be provided: grant a lease and keep it alive while holding or waiting`)

	// ErrBadFencingToken: a release's fencing token is a create revision
	// (> 0), or 0 for none.
	ErrBadFencingToken = status.Error(codes.InvalidArgument, `"fencing_token" must be a fencing token (> 0) or 0`)

	// ErrKeyMissing: a release of coordproxy's API without a key.
	ErrKeyMissing = status.Error(codes.InvalidArgument, `"key" field must be provided`)
)
