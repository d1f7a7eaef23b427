package semaphore

import (
	"strconv"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Errors of the SemaphoreService beside the ones every primitive shares
// (grant/errors.go).
var (
	errLimitInvalid    = status.Error(codes.InvalidArgument, `"limit" field must be at least 1`)
	errNotSemaphoreKey = status.Error(codes.InvalidArgument,
		`"key" field is not a semaphore key: want <name>/<lease ID in hex> of a key attached to that lease`)
)

// errOtherLimit: name's keys say another limit, or belong to a lock or an
// election. Holders counted by different limits would let too many in.
func errOtherLimit(name string, kv *mvccpb.KeyValue, limit int64) error {
	if other, err := strconv.ParseInt(string(kv.Value), 10, 64); err == nil && other >= 1 {
		return status.Errorf(codes.FailedPrecondition, "semaphore %q is in use with limit %d, not %d", name, other, limit)
	}
	return status.Errorf(codes.FailedPrecondition, "name %q is in use with another limit: key %q is not a semaphore's (a lock or an election?)", name, kv.Key)
}
