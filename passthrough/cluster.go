package passthrough

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/coordproxy/coordproxy/etcdio"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Cluster answers MemberList with the coordproxy replicas instead of etcd's
// members, as etcd's grpc-proxy does, so that `etcdctl member list`,
// `etcdctl endpoint status --cluster` and clients that sync their endpoints
// (clientv3.Config.AutoSyncInterval) stay on the proxies: this replica's
// advertised client URLs, and, where replicas register in etcd (Register),
// every registered one's. Membership changes act on etcd's cluster, which is
// not the proxy's callers' to change: they are not served.
type Cluster struct {
	pb.UnsafeClusterServer
	etcd       *etcdio.Etcd
	self       Member
	registered bool // replicas register: list them
}

// MembersPrefix is where the replicas register (under the proxy's
// namespace, so replicas of one namespace list each other).
const MembersPrefix = "__coordproxy/members/"

// memberTTL is the registration's lease TTL: a replica that dies without
// stopping leaves the list this long after.
const memberTTL = 10

// Member is one replica's registration.
type Member struct {
	Name       string   `json:"name"`
	ClientURLs []string `json:"clientURLs"`
}

// ID is the member ID a replica is listed with: a hash of its URLs.
func (m Member) ID() uint64 {
	h := fnv.New64a()
	h.Write([]byte(strings.Join(m.ClientURLs, ",")))
	return h.Sum64()
}

// NewCluster returns the Cluster service of the replica self; registered:
// the replicas register, and MemberList lists them all.
func NewCluster(etcd *etcdio.Etcd, self Member, registered bool) *Cluster {
	return &Cluster{etcd: etcd, self: self, registered: registered}
}

// Register puts self in the replica list (once it returns, if etcd
// answered) and keeps it there in the background while ctx lasts, retrying
// while etcd is unreachable; when ctx ends it leaves the list at once (its
// lease is revoked) and done is closed.
func Register(ctx context.Context, etcd *etcdio.Etcd, self Member, log *slog.Logger) (done <-chan struct{}) {
	value, _ := json.Marshal(self)
	key := fmt.Sprintf("%s%016x", MembersPrefix, self.ID())
	cli := etcd.Own()
	register := func() (clientv3.LeaseID, error) {
		rctx, cancel := context.WithTimeout(ctx, etcd.RequestTimeout())
		defer cancel()
		lease, err := cli.Grant(rctx, memberTTL)
		if err != nil {
			return 0, err
		}
		_, err = cli.Put(rctx, key, string(value), clientv3.WithLease(lease.ID))
		return lease.ID, err
	}
	lease, err := register()
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		for {
			if err == nil {
				var kept <-chan *clientv3.LeaseKeepAliveResponse
				if kept, err = cli.KeepAlive(ctx, lease); err == nil {
					for range kept {
					}
				}
				if ctx.Err() != nil {
					rctx, cancel := context.WithTimeout(context.Background(), etcd.RequestTimeout())
					cli.Revoke(rctx, lease)
					cancel()
					return
				}
			}
			log.Debug("replica registration lost; registering again", "key", key, "error", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			lease, err = register()
		}
	}()
	return ended
}

// MemberList lists this replica and, if replicas register, the others.
func (c *Cluster) MemberList(ctx context.Context, r *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	opts := []clientv3.OpOption{clientv3.WithPrefix()}
	if !r.Linearizable {
		opts = append(opts, clientv3.WithSerializable())
	}
	if !c.registered {
		opts = append(opts, clientv3.WithCountOnly()) // only the header
	}
	resp, err := c.etcd.Own().Get(ctx, MembersPrefix, opts...)
	if err != nil {
		return nil, err
	}
	members := []Member{c.self}
	for _, kv := range resp.Kvs {
		var m Member
		if json.Unmarshal(kv.Value, &m) == nil && len(m.ClientURLs) > 0 && m.ID() != c.self.ID() {
			members = append(members, m)
		}
	}
	slices.SortFunc(members, func(a, b Member) int { return strings.Compare(a.Name+a.ClientURLs[0], b.Name+b.ClientURLs[0]) })
	out := &pb.MemberListResponse{Header: resp.Header}
	for _, m := range members {
		out.Members = append(out.Members, &pb.Member{ID: m.ID(), Name: m.Name, ClientURLs: m.ClientURLs})
	}
	return out, nil
}

// MemberAdd is not served through the proxy: it answers as notServed says.
func (c *Cluster) MemberAdd(context.Context, *pb.MemberAddRequest) (*pb.MemberAddResponse, error) {
	return nil, notServed("MemberAdd")
}

// MemberRemove is not served through the proxy: it answers as notServed says.
func (c *Cluster) MemberRemove(context.Context, *pb.MemberRemoveRequest) (*pb.MemberRemoveResponse, error) {
	return nil, notServed("MemberRemove")
}

// MemberUpdate is not served through the proxy: it answers as notServed says.
func (c *Cluster) MemberUpdate(context.Context, *pb.MemberUpdateRequest) (*pb.MemberUpdateResponse, error) {
	return nil, notServed("MemberUpdate")
}

// MemberPromote is not served through the proxy: it answers as notServed says.
func (c *Cluster) MemberPromote(context.Context, *pb.MemberPromoteRequest) (*pb.MemberPromoteResponse, error) {
	return nil, notServed("MemberPromote")
}
