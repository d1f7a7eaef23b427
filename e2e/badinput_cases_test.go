package e2e

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"google.golang.org/grpc/codes"
)

var badCases = []badCase{
	// Lock
	{rpc: "Lock", what: "empty name",
		run:  func(b *bad) func(context.Context) error { return lockCall(b, nil, b.lease()) },
		code: codes.InvalidArgument, msg: `"name" field must be provided`},
	{rpc: "Lock", what: "name containing the separator /", same: true,
		run: func(b *bad) func(context.Context) error { return lockCall(b, b.name("/a/b"), b.lease()) }},
	{rpc: "Lock", what: "name containing NUL", same: true,
		run: func(b *bad) func(context.Context) error { return lockCall(b, b.name("\x00nul\x00"), b.lease()) }},
	{rpc: "Lock", what: "name of 1 MiB (concurrency's transaction carries it 7 times)", same: true,
		run: func(b *bad) func(context.Context) error {
			return lockCall(b, append(b.name(""), repeat(1<<20)...), b.lease())
		}},
	{rpc: "Lock", what: "name over etcd's request limit", same: true,
		run: func(b *bad) func(context.Context) error {
			return lockCall(b, append(b.name(""), repeat(overRequestLimit)...), b.lease())
		}},
	{rpc: "Lock", what: "name over the gRPC message limit", same: true,
		run: func(b *bad) func(context.Context) error {
			return lockCall(b, append(b.name(""), repeat(overGRPCLimit)...), b.lease())
		}},
	{rpc: "Lock", what: "lease 0", same: true,
		run: func(b *bad) func(context.Context) error { return lockCall(b, b.name("l0"), 0) }},
	{rpc: "Lock", what: "negative lease", same: true,
		run: func(b *bad) func(context.Context) error { return lockCall(b, b.name("neg"), -5) }},
	{rpc: "Lock", what: "unknown lease", same: true,
		run: func(b *bad) func(context.Context) error { return lockCall(b, b.name("unknown"), 0x7fff0000beef) }},
	{rpc: "Lock", what: "revoked lease", same: true,
		run: func(b *bad) func(context.Context) error { return lockCall(b, b.name("revoked"), b.revokedLease()) }},
	{rpc: "Lock", what: "lease that already holds the name", same: true,
		run: func(b *bad) func(context.Context) error {
			h := b.hold(string(b.name("again")), "")
			return func(ctx context.Context) error {
				r, err := b.to.lock.Lock(ctx, &v3lockpb.LockRequest{Name: h.Name, Lease: h.Lease})
				if err == nil {
					b.expect(bytes.Equal(r.Key, h.Key), "Lock key %q, want the held %q", r.Key, h.Key)
				}
				return err
			}
		}},
	{rpc: "Lock", what: "deadline passes while waiting behind a holder", same: true, deadline: 500 * time.Millisecond,
		run: func(b *bad) func(context.Context) error {
			b.hold(string(b.name("held")), "")
			return lockCall(b, b.name("held"), b.lease())
		}},
	{rpc: "Lock", what: "deadline passes behind a plain key under the prefix", same: true, deadline: 500 * time.Millisecond,
		run: func(b *bad) func(context.Context) error {
			b.put(string(b.name("plain"))+"/config", "v", 0)
			return lockCall(b, b.name("plain"), b.lease())
		}},
	{rpc: "Lock", what: "deadline already expired", same: true, deadline: -time.Second,
		run: func(b *bad) func(context.Context) error { return lockCall(b, b.name("late"), b.lease()) }},

	// Unlock
	{rpc: "Unlock", what: "empty key", same: true,
		run: func(b *bad) func(context.Context) error { return unlockCall(b, nil) }},
	{rpc: "Unlock", what: "foreign key (application data)",
		run: func(b *bad) func(context.Context) error {
			b.put(string(b.name("app/config")), "precious", 0)
			return unlockCall(b, b.name("app/config"))
		},
		code: codes.InvalidArgument, msg: errNotOwnerKey},
	{rpc: "Unlock", what: "key under another lock's prefix, on another lease",
		run: func(b *bad) func(context.Context) error {
			h := b.hold(string(b.name("other")), "")
			key := fmt.Sprintf("%s/%x", h.Name, h.Lease+1)
			b.put(key, "", h.Lease) // name/hex(L+1) attached to L
			return unlockCall(b, []byte(key))
		},
		code: codes.InvalidArgument, msg: errNotOwnerKey},
	{rpc: "Unlock", what: "plain key shaped like an ownership key (no lease)",
		run: func(b *bad) func(context.Context) error {
			key := string(b.name("shaped")) + "/7b"
			b.put(key, "", 0)
			return unlockCall(b, []byte(key))
		},
		code: codes.InvalidArgument, msg: errNotOwnerKey},
	{rpc: "Unlock", what: "ownership key in upper-case hex",
		run: func(b *bad) func(context.Context) error {
			h := b.hold(string(b.name("upper")), "")
			hex := fmt.Sprintf("%x", h.Lease)
			upper := strings.ToUpper(hex)
			if upper == hex {
				upper = "0" + hex // no letters to raise: a leading zero is just as non-canonical
			}
			return unlockCall(b, []byte(string(h.Name)+"/"+upper))
		},
		code: codes.InvalidArgument, msg: errNotOwnerKey},
	{rpc: "Unlock", what: "the prefix alone",
		run: func(b *bad) func(context.Context) error {
			b.hold(string(b.name("pfx")), "")
			b.put(string(b.name("pfx"))+"/", "", 0)
			return unlockCall(b, []byte(string(b.name("pfx"))+"/"))
		},
		code: codes.InvalidArgument, msg: errNotOwnerKey},
	{rpc: "Unlock", what: "key of a lock already released", same: true,
		run: func(b *bad) func(context.Context) error {
			return unlockCall(b, []byte(fmt.Sprintf("%s/%x", b.name("gone"), b.lease())))
		}},
	{rpc: "Unlock", what: "key over the gRPC message limit", same: true,
		run: func(b *bad) func(context.Context) error {
			return unlockCall(b, append(b.name(""), repeat(overGRPCLimit)...))
		}},

	// Campaign
	{rpc: "Campaign", what: "empty name",
		run:  func(b *bad) func(context.Context) error { return campaignCall(b, nil, b.lease(), []byte("v")) },
		code: codes.InvalidArgument, msg: `"name" field must be provided`},
	{rpc: "Campaign", what: "name containing the separator / and NUL", same: true,
		run: func(b *bad) func(context.Context) error {
			return campaignCall(b, b.name("/e\x00/f"), b.lease(), []byte("v"))
		}},
	{rpc: "Campaign", what: "lease 0", same: true,
		run: func(b *bad) func(context.Context) error { return campaignCall(b, b.name("e0"), 0, []byte("v")) }},
	{rpc: "Campaign", what: "negative lease", same: true,
		run: func(b *bad) func(context.Context) error { return campaignCall(b, b.name("eneg"), -5, []byte("v")) }},
	{rpc: "Campaign", what: "unknown lease", same: true,
		run: func(b *bad) func(context.Context) error {
			return campaignCall(b, b.name("eunknown"), 0x7fff0000beef, []byte("v"))
		}},
	{rpc: "Campaign", what: "revoked lease", same: true,
		run: func(b *bad) func(context.Context) error {
			return campaignCall(b, b.name("erevoked"), b.revokedLease(), []byte("v"))
		}},
	{rpc: "Campaign", what: "value of 1 MiB", same: true,
		run: func(b *bad) func(context.Context) error {
			return campaignCall(b, b.name("ebig"), b.lease(), repeat(1<<20))
		}},
	{rpc: "Campaign", what: "value over etcd's request limit", same: true,
		run: func(b *bad) func(context.Context) error {
			return campaignCall(b, b.name("ehuge"), b.lease(), repeat(overRequestLimit))
		}},
	{rpc: "Campaign", what: "value over the gRPC message limit", same: true,
		run: func(b *bad) func(context.Context) error {
			return campaignCall(b, b.name("ehuger"), b.lease(), repeat(overGRPCLimit))
		}},
	{rpc: "Campaign", what: "deadline passes while waiting behind a leader", same: true, deadline: 500 * time.Millisecond,
		run: func(b *bad) func(context.Context) error {
			b.hold(string(b.name("eheld")), "leader")
			return campaignCall(b, b.name("eheld"), b.lease(), []byte("v"))
		}},
	{rpc: "Campaign", what: "deadline already expired", same: true, deadline: -time.Second,
		run: func(b *bad) func(context.Context) error {
			return campaignCall(b, b.name("elate"), b.lease(), []byte("v"))
		}},

	// Proclaim
	{rpc: "Proclaim", what: "missing leader", same: true,
		run: func(b *bad) func(context.Context) error { return proclaimCall(b, nil, []byte("v")) }},
	{rpc: "Proclaim", what: "leader with empty key", same: true,
		run: func(b *bad) func(context.Context) error {
			lk := b.hold(string(b.name("pempty")), "old")
			lk.Key = nil
			return proclaimCall(b, lk, []byte("v"))
		}},
	{rpc: "Proclaim", what: "partial leader: no name",
		run: func(b *bad) func(context.Context) error {
			lk := b.hold(string(b.name("pnoname")), "old")
			lk.Name = nil
			return proclaimCall(b, lk, []byte("v"))
		},
		code: codes.InvalidArgument, msg: `"leader.name" field must be provided`},
	{rpc: "Proclaim", what: "partial leader: no rev",
		run: func(b *bad) func(context.Context) error {
			lk := b.hold(string(b.name("pnorev")), "old")
			lk.Rev = 0
			return proclaimCall(b, lk, []byte("v"))
		},
		code: codes.InvalidArgument, msg: `"leader.rev" field must be a positive revision`},
	{rpc: "Proclaim", what: "forged leader: wrong rev", same: true,
		run: func(b *bad) func(context.Context) error {
			lk := b.hold(string(b.name("prev")), "old")
			lk.Rev++
			return proclaimCall(b, lk, []byte("v"))
		}},
	{rpc: "Proclaim", what: "forged leader: wrong lease",
		run: func(b *bad) func(context.Context) error {
			lk := b.hold(string(b.name("please")), "old")
			lk.Lease = b.lease()
			return proclaimCall(b, lk, []byte("v"))
		},
		code: codes.InvalidArgument, msg: `"leader.lease" field does not match "leader.key"`},
	{rpc: "Proclaim", what: "forged leader: another election's key",
		run: func(b *bad) func(context.Context) error {
			lk := b.hold(string(b.name("pvictim")), "old")
			lk.Name = b.name("pmine")
			return proclaimCall(b, lk, []byte("v"))
		},
		code: codes.InvalidArgument, msg: errForeignLeader},
	{rpc: "Proclaim", what: "forged leader: key of a plain application key",
		run: func(b *bad) func(context.Context) error {
			rev := b.put(string(b.name("papp/config")), "precious", 0)
			return proclaimCall(b, &epb.LeaderKey{Name: b.name("papp"), Key: b.name("papp/config"), Rev: rev}, []byte("v"))
		},
		code: codes.InvalidArgument, msg: errForeignLeader},
	{rpc: "Proclaim", what: "value over etcd's request limit", same: true,
		run: func(b *bad) func(context.Context) error {
			return proclaimCall(b, b.hold(string(b.name("phuge")), "old"), repeat(overRequestLimit))
		}},
	{rpc: "Proclaim", what: "leader whose lease was revoked", same: true,
		run: func(b *bad) func(context.Context) error {
			lk := b.hold(string(b.name("pgone")), "old")
			b.kv.Revoke(context.Background(), clientv3.LeaseID(lk.Lease))
			return proclaimCall(b, lk, []byte("v"))
		}},

	// Resign
	{rpc: "Resign", what: "missing leader", same: true,
		run: func(b *bad) func(context.Context) error { return resignCall(b, nil) }},
	{rpc: "Resign", what: "leader with empty key", same: true,
		run: func(b *bad) func(context.Context) error {
			lk := b.hold(string(b.name("rempty")), "v")
			lk.Key = nil
			return resignCall(b, lk)
		}},
	{rpc: "Resign", what: "forged leader: wrong rev", same: true,
		run: func(b *bad) func(context.Context) error {
			lk := b.hold(string(b.name("rrev")), "v")
			lk.Rev--
			return resignCall(b, lk)
		}},
	{rpc: "Resign", what: "forged leader: another election's key",
		run: func(b *bad) func(context.Context) error {
			lk := b.hold(string(b.name("rvictim")), "v")
			lk.Name = b.name("rmine")
			return resignCall(b, lk)
		},
		code: codes.InvalidArgument, msg: errForeignLeader},
	{rpc: "Resign", what: "forged leader: plain application key",
		run: func(b *bad) func(context.Context) error {
			rev := b.put(string(b.name("rapp/config")), "precious", 0)
			return resignCall(b, &epb.LeaderKey{Name: b.name("rapp"), Key: b.name("rapp/config"), Rev: rev})
		},
		code: codes.InvalidArgument, msg: errForeignLeader},
	{rpc: "Resign", what: "partial leader: no rev",
		run: func(b *bad) func(context.Context) error {
			lk := b.hold(string(b.name("rnorev")), "v")
			lk.Rev = 0
			return resignCall(b, lk)
		},
		code: codes.InvalidArgument, msg: `"leader.rev" field must be a positive revision`},

	// Leader
	{rpc: "Leader", what: "unknown name", same: true,
		run: func(b *bad) func(context.Context) error {
			return func(ctx context.Context) error {
				_, err := b.to.elec.Leader(ctx, &epb.LeaderRequest{Name: b.name("nobody")})
				return err
			}
		}},
	{rpc: "Leader", what: "empty name",
		run: func(b *bad) func(context.Context) error {
			b.put("/"+string(b.name("x")), "not a leader", 0)
			return func(ctx context.Context) error {
				_, err := b.to.elec.Leader(ctx, &epb.LeaderRequest{})
				return err
			}
		},
		code: codes.InvalidArgument, msg: `"name" field must be provided`},

	// Observe
	{rpc: "Observe", what: "unknown name until the deadline", same: true, deadline: 500 * time.Millisecond,
		run: func(b *bad) func(context.Context) error { return observeCall(b, b.name("nobody")) }},
	{rpc: "Observe", what: "empty name",
		run: func(b *bad) func(context.Context) error {
			b.put("/"+string(b.name("x")), "not a leader", 0)
			return observeCall(b, nil)
		},
		code: codes.InvalidArgument, msg: `"name" field must be provided`},

	// Lease (pass-through)
	{rpc: "LeaseRevoke", what: "unknown lease", same: true,
		run: func(b *bad) func(context.Context) error {
			return func(ctx context.Context) error {
				_, err := b.to.lease.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: 0x7fff0000beef})
				return err
			}
		}},
	{rpc: "LeaseGrant", what: "ID already in use", same: true,
		run: func(b *bad) func(context.Context) error {
			id := b.lease()
			return func(ctx context.Context) error {
				_, err := b.to.lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: id, TTL: 10})
				return err
			}
		}},
	{rpc: "LeaseTimeToLive", what: "unknown lease", same: true,
		run: func(b *bad) func(context.Context) error {
			return func(ctx context.Context) error {
				r, err := b.to.lease.LeaseTimeToLive(ctx, &pb.LeaseTimeToLiveRequest{ID: 0x7fff0000beef})
				if err == nil {
					b.expect(r.TTL == -1, "TTL %d, want -1", r.TTL)
				}
				return err
			}
		}},
}
