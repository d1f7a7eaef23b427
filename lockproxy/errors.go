package lockproxy

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Errors of the Lock services beside the ones every primitive shares
// (grant/errors.go) and etcd's own values (rpctypes, concurrency), which
// keep etcd's code and text on the wire.
var (
	errNotOwnerKey = status.Error(codes.InvalidArgument,
		`"key" field is not a lock ownership key: want <name>/<lease ID in hex> of a key attached to that lease`)

	// errLockHeld is TryLock's refusal; the holder goes in the details.
	errLockHeld = status.New(codes.FailedPrecondition, "coordproxy: lock is held")
)
