package electionproxy

import (
	"github.com/coordproxy/coordproxy/grant"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Errors of the Election service. Situations etcd defines keep etcd's own
// error values, so the wire code and text are etcd's: clients such as jetcd
// match on the text.
var (
	errMissingLeaderKey = v3election.ErrMissingLeaderKey // `"leader" field must be provided`
	errNotLeader        = concurrency.ErrElectionNotLeader
	errNoLeader         = concurrency.ErrElectionNoLeader
	errEmptyKey         = rpctypes.ErrEmptyKey
	errNameMissing      = grant.ErrNameMissing

	// Malformed leader keys, which etcd accepts and then misbehaves on: it
	// proclaims onto, and can even create, keys of other elections, and moves
	// the leader key to whatever lease the request names.
	errLeaderNameMissing = status.Error(codes.InvalidArgument, `"leader.name" field must be provided`)
	errLeaderKeyForeign  = status.Error(codes.InvalidArgument,
		`"leader.key" field is not a candidate key of "leader.name": want <name>/<lease ID in hex>`)
	errLeaderLeaseMismatch = status.Error(codes.InvalidArgument, `"leader.lease" field does not match "leader.key"`)
	errLeaderRev           = status.Error(codes.InvalidArgument, `"leader.rev" field must be a positive revision`)

	// errObserverTooSlow ends an Observe stream whose client reads more slowly
	// than leaders change; the client observes again and starts from the
	// current leader.
	errObserverTooSlow = status.Error(codes.ResourceExhausted,
		"coordproxy: observe stream fell too far behind the leader changes; observe again")
)
