package client

import (
	"errors"
	"fmt"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// LockedError is TryLock's answer when another holds the lock:
// errors.Is(err, concurrency.ErrLocked) is true, and Holder says who.
type LockedError struct {
	Holder *coordproxyv1.Key // nil if the proxy did not say
}

func (e *LockedError) Error() string {
	if e.Holder == nil {
		return concurrency.ErrLocked.Error()
	}
	return fmt.Sprintf("%s: held by %s (lease %x, since revision %d)", concurrency.ErrLocked, e.Holder.Key, e.Holder.Lease, e.Holder.CreateRevision)
}

// Is makes errors.Is(err, concurrency.ErrLocked) true.
func (e *LockedError) Is(target error) bool { return target == concurrency.ErrLocked }

// etcd's errors that concurrency defines travel as their text (gRPC code
// Unknown); they come back as concurrency's values.
var etcdErrors = []error{
	concurrency.ErrSessionExpired,
	concurrency.ErrElectionNotLeader,
	concurrency.ErrElectionNoLeader,
}

// fromWire turns a call's error into the client's: concurrency's values
// where the text is theirs, LockedError for a refused TryLock, etcd's
// client's errors (rpctypes) for etcd's, else err.
func fromWire(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	if st.Code() == codes.FailedPrecondition {
		for _, d := range st.Details() {
			if c, ok := d.(*coordproxyv1.Contended); ok {
				return &LockedError{Holder: c.Holder}
			}
		}
	}
	for _, e := range etcdErrors {
		if st.Message() == e.Error() {
			return fmt.Errorf("%w", e)
		}
	}
	// etcd's server errors (rpctypes.ErrLeaseNotFound, …), as etcd's
	// client gives them.
	return rpctypes.Error(err)
}

var errNotHeld = errors.New("client: not held")
