package proxy

import (
	"errors"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// wireErr is the one place where the proxy's errors become what goes on the
// wire, applied by the edge (edge.go) to every call's error.
//
// etcd's native Lock and Election services run concurrency's transactions
// inside the member, where no gRPC message limit applies: a request too big
// for etcd is answered "etcdserver: request is too large". The proxy sends
// the same transactions over gRPC, and etcd's gRPC server refuses those over
// its message limit (--max-request-bytes plus 512 KiB) before etcd sees them.
// serviceErr gives the proxy's Lock and Election callers etcd's own answer.
// (A request too big for the proxy's own listener never reaches a handler
// and gets gRPC's ResourceExhausted, as it does from etcd.)
//
// A caller that asks for a leader (etcd's "hasleader" metadata, which the
// proxy forwards) is refused by etcd's interceptor with Unavailable
// "etcdserver: no leader" when the member has none; the proxy learns it from
// its etcd client as an error without a gRPC code (etcdio's
// noLeaderIsFinal), and serviceErr puts etcd's status back.
//
// Every other service (the pass-through, coordproxy's own) answers etcd's
// errors with etcd's codes: etcdStatus.

func isEtcdService(method string) bool {
	return strings.HasPrefix(method, "/v3lockpb.Lock/") || strings.HasPrefix(method, "/v3electionpb.Election/")
}

func serviceErr(err error) error {
	if errors.Is(err, rpctypes.ErrNoLeader) {
		return rpctypes.ErrGRPCNoLeader
	}
	st, ok := status.FromError(err)
	if ok && st.Code() == codes.ResourceExhausted &&
		(strings.HasPrefix(st.Message(), "grpc: received message larger than max") ||
			strings.HasPrefix(st.Message(), "grpc: trying to send message larger than max")) {
		return rpctypes.ErrRequestTooLarge
	}
	return err
}

func wireErr(method string, err error) error {
	if err == nil {
		return nil
	}
	if isEtcdService(method) {
		return serviceErr(err)
	}
	return etcdStatus(err)
}

// etcdStatus puts back the gRPC code of an etcd error that the etcd client
// turned into an rpctypes.EtcdError (a text and a code, but no gRPC status):
// returned as is, gRPC would send it as Unknown, where etcd's KV, Watch and
// Maintenance services send the code. (etcd's own Lock and Election services
// do send Unknown for these, and coordproxy's do the same.)
func etcdStatus(err error) error {
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return status.Error(ee.Code(), ee.Error())
	}
	return err
}
