package etcdio

import (
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/namespace"
)

// namespaced puts every key c touches under prefix ns, as etcd's grpc-proxy
// does for --namespace: lock and election keys, KV requests, watches, and
// the keys a lease lists. Keys in responses come back without it, and a
// range can never reach past it.
func namespaced(c *clientv3.Client, ns string) {
	if ns == "" {
		return
	}
	c.KV = namespace.NewKV(c.KV, ns)
	c.Watcher = namespace.NewWatcher(c.Watcher, ns)
	c.Lease = namespace.NewLease(c.Lease, ns)
}
