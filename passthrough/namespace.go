package passthrough

import (
	"bytes"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

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
