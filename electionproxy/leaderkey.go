package electionproxy

import (
	"github.com/coordproxy/coordproxy/keyspace"
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
)

// checkLeaderKey accepts only a LeaderKey that can have come from Campaign:
// key is name/hex(lease) and rev is a revision. etcd's own errors come first
// so that the requests etcd rejects get etcd's answers.
func checkLeaderKey(lk *epb.LeaderKey) error {
	switch {
	case lk == nil:
		return errMissingLeaderKey
	case len(lk.Key) == 0:
		return errEmptyKey
	case len(lk.Name) == 0:
		return errLeaderNameMissing
	}
	name, lease, ok := keyspace.ParseOwnerKey(string(lk.Key))
	switch {
	case !ok || name != string(lk.Name):
		return errLeaderKeyForeign
	case lk.Lease != 0 && int64(lease) != lk.Lease:
		return errLeaderLeaseMismatch
	case lk.Rev <= 0:
		return errLeaderRev
	}
	return nil
}
