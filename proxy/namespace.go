package proxy

import (
	"bytes"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/namespace"
)

// namespaced puts every key the proxy's etcd client touches under prefix
// ns, as etcd's grpc-proxy does for --namespace: Lock and Election keys, KV
// requests, watches, and the keys a lease lists. Keys in responses come back
// without it, and a range can never reach past it.
func namespaced(c *clientv3.Client, ns string) {
	if ns == "" {
		return
	}
	c.KV = namespace.NewKV(c.KV, ns)
	c.Watcher = namespace.NewWatcher(c.Watcher, ns)
	c.Lease = namespace.NewLease(c.Lease, ns)
}

// prefixInterval maps a key range of a client into namespace ns, as the
// etcd client's namespace package does: "\x00" as the range end (every key
// from key on) becomes the end of the namespace.
func prefixInterval(ns string, key, end []byte) ([]byte, []byte) {
	pkey := append([]byte(ns), key...)
	switch {
	case len(end) == 1 && end[0] == 0:
		return pkey, []byte(clientv3.GetPrefixRangeEnd(ns))
	case len(end) > 0:
		return pkey, append([]byte(ns), end...)
	}
	return pkey, nil
}

// stripKV takes the namespace off a key etcd returned.
func stripKV(ns string, kv *mvccpb.KeyValue) {
	if kv != nil {
		kv.Key = bytes.TrimPrefix(kv.Key, []byte(ns))
	}
}
