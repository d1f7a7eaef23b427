package proxy

import (
	"errors"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/status"
)

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
