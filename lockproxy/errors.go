package lockproxy

import (
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Errors of the Lock service. Where etcd defines the situation, the services
// return etcd's own error values (rpctypes, concurrency) so that the code and
// text on the wire are etcd's; these are for input etcd would accept and then
// misbehave on.
var (
	// ErrNameMissing: an empty name makes the prefix "/", which overlaps every
	// lock and election whose name starts with "/".
	ErrNameMissing = status.Error(codes.InvalidArgument, `"name" field must be provided`)

	// ErrLeaseMissing: coordproxy's own API never grants a lease for the
	// caller (etcd's Lock grants one that nobody keeps alive).
	ErrLeaseMissing = status.Error(codes.InvalidArgument,
		`"lease" field must be provided: grant a lease and keep it alive while holding or waiting`)

	errSessionExpired = concurrency.ErrSessionExpired

	errNotOwnerKey = status.Error(codes.InvalidArgument,
		`"key" field is not a lock ownership key: want <name>/<lease ID in hex> of a key attached to that lease`)

	// Of coordproxy's own semaphore and read/write lock services.

	// errKeyMissing: Release or RWLock Unlock without a key.
	errKeyMissing      = status.Error(codes.InvalidArgument, `"key" field must be provided`)
	errLimitInvalid    = status.Error(codes.InvalidArgument, `"limit" field must be at least 1`)
	errNotSemaphoreKey = status.Error(codes.InvalidArgument,
		`"key" field is not a semaphore key: want <name>/<lease ID in hex> of a key attached to that lease`)
	errNotRWLockKey = status.Error(codes.InvalidArgument,
		`"key" field is not a read/write lock key: want <name>/read/<number> or <name>/write/<number> of a key attached to a lease`)
)
