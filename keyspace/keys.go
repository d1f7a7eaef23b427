// Package keyspace is the key layout coordproxy shares with etcd's
// client/v3/concurrency and its native Lock and Election services, so that
// a mixed fleet on the same names excludes each other: a name's queue is
// the keys under name + "/", each key is the prefix and its lease in hex,
// and the oldest key (lowest create revision) holds.
package keyspace

import (
	"fmt"
	"strconv"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Prefix is the key prefix under which the waiters of lock or election name
// live, as concurrency.NewMutex and concurrency.NewElection build it.
func Prefix(name string) string { return name + "/" }

// OwnerKey is the key that lease holds or waits with under name: the prefix
// followed by the lease ID in lower-case hex, exactly as concurrency formats it.
func OwnerKey(name string, lease clientv3.LeaseID) string {
	return fmt.Sprintf("%s%x", Prefix(name), int64(lease))
}

// ParseOwnerKey splits an ownership key into its name and lease. ok is false
// when key is not of the form name + "/" + hex(lease) with a positive lease in
// the canonical form concurrency writes (lower case, no leading zeros).
func ParseOwnerKey(key string) (name string, lease clientv3.LeaseID, ok bool) {
	i := strings.LastIndexByte(key, '/')
	if i < 0 {
		return "", 0, false
	}
	hex := key[i+1:]
	id, err := strconv.ParseInt(hex, 16, 64)
	if err != nil || id <= 0 || strconv.FormatInt(id, 16) != hex {
		return "", 0, false
	}
	return key[:i], clientv3.LeaseID(id), true
}
