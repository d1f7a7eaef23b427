package keyspace

import (
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func TestParseOwnerKey(t *testing.T) {
	tests := []struct {
		key   string
		name  string
		lease clientv3.LeaseID
		ok    bool
	}{
		{"a/694d77aa4ad3cb05", "a", 0x694d77aa4ad3cb05, true},
		{"/x/y/1", "/x/y", 1, true},
		{"/abc", "", 0xabc, true},
		{"a/7fffffffffffffff", "a", 0x7fffffffffffffff, true},
		{"config", "", 0, false},             // no separator
		{"a/", "", 0, false},                 // no lease
		{"a/0", "", 0, false},                // lease 0 never owns a key
		{"a/-5", "", 0, false},               // negative
		{"a/ABC", "", 0, false},              // concurrency writes lower case
		{"a/0abc", "", 0, false},             // nor leading zeros
		{"a/zz", "", 0, false},               // not hex
		{"a/8000000000000000", "", 0, false}, // over int64
		{"a/abc/", "", 0, false},
	}
	for _, tt := range tests {
		name, lease, ok := ParseOwnerKey(tt.key)
		if ok != tt.ok || name != tt.name || lease != tt.lease {
			t.Errorf("ParseOwnerKey(%q) = %q, %x, %v; want %q, %x, %v", tt.key, name, lease, ok, tt.name, tt.lease, tt.ok)
		}
		if ok && OwnerKey(name, lease) != tt.key {
			t.Errorf("OwnerKey(%q, %x) = %q, want %q", name, lease, OwnerKey(name, lease), tt.key)
		}
	}
}
