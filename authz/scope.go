package authz

import (
	"github.com/coordproxy/coordproxy/policy"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
)

// access is what a request needs: its verb on its keys, the use of a lease
// (0: none), or the use of the lease a key is on (leaseOf: the lease its
// name says, else the one etcd has it on). always: it needs no permission.
type access struct {
	verb    policy.Verb
	ranges  []policy.KeyRange
	lease   int64
	leaseOf []byte
	always  bool
}

// scopes is the one place that reads a request's access, by the gRPC full
// method name of the call (one message type serves several methods: an
// UnlockRequest releases a lock or an RW lock). A method served without an
// entry here is refused under every policy (verb "unknown"); a Txn is
// decided by its compares and operations (txnScope); a Watch by each watch
// it creates (watchScope).
var scopes = map[string]func(req any) access{
	"/v3lockpb.Lock/Lock": func(req any) access {
		r := req.(*v3lockpb.LockRequest)
		return access{verb: policy.Lock, ranges: names(r.Name), lease: r.Lease}
	},
	"/v3lockpb.Lock/Unlock": func(req any) access {
		r := req.(*v3lockpb.UnlockRequest)
		return access{verb: policy.Lock, ranges: keys(r.Key), lease: keyLease(r.Key)}
	},
	"/v3electionpb.Election/Campaign": func(req any) access {
		r := req.(*v3electionpb.CampaignRequest)
		return access{verb: policy.Elect, ranges: names(r.Name), lease: r.Lease}
	},
	"/v3electionpb.Election/Proclaim": func(req any) access {
		l := req.(*v3electionpb.ProclaimRequest).GetLeader()
		return access{verb: policy.Elect, ranges: names(l.GetName()), lease: l.GetLease()}
	},
	"/v3electionpb.Election/Resign": func(req any) access {
		l := req.(*v3electionpb.ResignRequest).GetLeader()
		return access{verb: policy.Elect, ranges: names(l.GetName()), lease: l.GetLease()}
	},
	"/v3electionpb.Election/Leader": func(req any) access {
		return access{verb: policy.Read, ranges: names(req.(*v3electionpb.LeaderRequest).Name)}
	},
	"/v3electionpb.Election/Observe": func(req any) access {
		return access{verb: policy.Read, ranges: names(req.(*v3electionpb.LeaderRequest).Name)}
	},

	"/coordproxy.v1.LockService/TryLock": v1Lock,
	"/coordproxy.v1.LockService/Lock":    v1Lock,
	"/coordproxy.v1.LockService/Unlock": func(req any) access {
		k := req.(*coordproxyv1.UnlockRequest).Key
		return access{verb: policy.Lock, ranges: keys(k), leaseOf: k}
	},
	"/coordproxy.v1.LockService/Describe": v1Describe,
	"/coordproxy.v1.SemaphoreService/Acquire": func(req any) access {
		r := req.(*coordproxyv1.AcquireRequest)
		return access{verb: policy.Lock, ranges: names(r.Name), lease: r.Lease}
	},
	"/coordproxy.v1.SemaphoreService/Release": func(req any) access {
		k := req.(*coordproxyv1.ReleaseRequest).Key
		return access{verb: policy.Lock, ranges: keys(k), lease: keyLease(k)}
	},
	"/coordproxy.v1.SemaphoreService/Describe": v1Describe,
	"/coordproxy.v1.RWLockService/RLock":       v1RWLock,
	"/coordproxy.v1.RWLockService/WLock":       v1RWLock,
	"/coordproxy.v1.RWLockService/Unlock": func(req any) access {
		k := req.(*coordproxyv1.UnlockRequest).Key
		return access{verb: policy.Lock, ranges: keys(k), leaseOf: k}
	},
	"/coordproxy.v1.ElectionService/Describe": v1Describe,
	"/coordproxy.v1.ElectionService/Observe": func(req any) access {
		return access{verb: policy.Read, ranges: names(req.(*coordproxyv1.ObserveRequest).Name)}
	},
	"/coordproxy.v1.SessionService/KeepAlive": func(req any) access {
		return access{verb: policy.Lease, lease: req.(*coordproxyv1.SessionRequest).Lease}
	},

	"/etcdserverpb.KV/Range": func(req any) access {
		r := req.(*pb.RangeRequest)
		return access{verb: policy.Read, ranges: []policy.KeyRange{keyRange(r.Key, r.RangeEnd)}}
	},
	"/etcdserverpb.KV/RangeStream": func(req any) access {
		r := req.(*pb.RangeRequest)
		return access{verb: policy.Read, ranges: []policy.KeyRange{keyRange(r.Key, r.RangeEnd)}}
	},
	"/etcdserverpb.KV/Put": func(req any) access {
		return access{verb: policy.Write, ranges: keys(req.(*pb.PutRequest).Key)}
	},
	"/etcdserverpb.KV/DeleteRange": func(req any) access {
		r := req.(*pb.DeleteRangeRequest)
		return access{verb: policy.Write, ranges: []policy.KeyRange{keyRange(r.Key, r.RangeEnd)}}
	},
	"/etcdserverpb.KV/Compact":        admin,
	"/etcdserverpb.Lease/LeaseLeases": admin,
	"/etcdserverpb.Lease/LeaseGrant":  func(any) access { return access{verb: policy.Lease} },
	"/etcdserverpb.Lease/LeaseRevoke": func(req any) access { return access{verb: policy.Lease, lease: req.(*pb.LeaseRevokeRequest).ID} },
	"/etcdserverpb.Lease/LeaseTimeToLive": func(req any) access {
		return access{verb: policy.Lease, lease: req.(*pb.LeaseTimeToLiveRequest).ID}
	},
	"/etcdserverpb.Lease/LeaseKeepAlive": func(req any) access {
		return access{verb: policy.Lease, lease: req.(*pb.LeaseKeepAliveRequest).ID}
	},
	"/etcdserverpb.Auth/Authenticate":  always,
	"/etcdserverpb.Maintenance/Status": always,
	"/etcdserverpb.Cluster/MemberList": always,
}

func v1Lock(req any) access {
	r := req.(*coordproxyv1.LockRequest)
	return access{verb: policy.Lock, ranges: names(r.Name), lease: r.Lease}
}

func v1RWLock(req any) access {
	r := req.(*coordproxyv1.RWLockRequest)
	return access{verb: policy.Lock, ranges: names(r.Name), lease: r.Lease}
}

func v1Describe(req any) access {
	return access{verb: policy.Read, ranges: names(req.(*coordproxyv1.DescribeRequest).Name)}
}

func admin(any) access  { return access{verb: policy.Admin} }
func always(any) access { return access{always: true} }

func names(n []byte) []policy.KeyRange { return []policy.KeyRange{policy.Name(string(n))} }
func keys(k []byte) []policy.KeyRange  { return []policy.KeyRange{policy.Key(string(k))} }

func keyRange(key, end []byte) policy.KeyRange {
	return policy.KeyRange{Key: string(key), End: string(end)}
}

// txnScope is a Txn's keys: what its compares and reads touch needs read,
// what its puts and deletes touch needs write, nested transactions included.
func txnScope(t *pb.TxnRequest, read, write []policy.KeyRange) ([]policy.KeyRange, []policy.KeyRange) {
	for _, c := range t.Compare {
		read = append(read, keyRange(c.Key, c.RangeEnd))
	}
	for _, ops := range [][]*pb.RequestOp{t.Success, t.Failure} {
		for _, op := range ops {
			switch o := op.Request.(type) {
			case *pb.RequestOp_RequestRange:
				read = append(read, keyRange(o.RequestRange.Key, o.RequestRange.RangeEnd))
			case *pb.RequestOp_RequestPut:
				write = append(write, keys(o.RequestPut.Key)...)
			case *pb.RequestOp_RequestDeleteRange:
				write = append(write, keyRange(o.RequestDeleteRange.Key, o.RequestDeleteRange.RangeEnd))
			case *pb.RequestOp_RequestTxn:
				read, write = txnScope(o.RequestTxn, read, write)
			}
		}
	}
	return read, write
}

// Scoped reports whether a call of method is decided by what it names:
// an entry in scopes, or a Txn's or a Watch's own rule. Any other method
// is refused under every policy (verb "unknown").
func Scoped(method string) bool {
	_, ok := scopes[method]
	return ok || method == txnMethod || method == watchMethod
}
