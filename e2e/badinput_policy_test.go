package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/codes"
)

// The bad-input table's refusals: with --policy in force, the test's
// (anonymous) client may use only the prefix mine/ and leases granted
// through the proxy. Each case reaches outside; coordproxy must answer
// etcd's PermissionDenied "etcdserver: permission denied" and leave the
// keyspace as it was. (etcd's native services have no such policy: they
// do what is asked.)
const refusalPolicy = `rules:
  - identities: [anonymous]
    prefixes: ["mine/"]
    verbs: [lock, elect, read, write, lease]
leases:
  unrecorded: deny
`

const permissionDenied = "etcdserver: permission denied"

var refusalCases = []badCase{
	{rpc: "Lock", what: "name outside the caller's prefixes",
		run: func(b *bad) func(context.Context) error { return lockCall(b, b.name("x"), b.lease()) }},
	{rpc: "Unlock", what: "a held key outside the caller's prefixes",
		run: func(b *bad) func(context.Context) error {
			return unlockCall(b, b.hold(string(b.name("held")), "").Key)
		}},
	{rpc: "Campaign", what: "election outside the caller's prefixes",
		run: func(b *bad) func(context.Context) error { return campaignCall(b, b.name("e"), b.lease(), []byte("v")) }},
	{rpc: "Proclaim", what: "for a leader outside the caller's prefixes",
		run: func(b *bad) func(context.Context) error {
			return proclaimCall(b, b.hold(string(b.name("pe")), "v"), []byte("other"))
		}},
	{rpc: "Resign", what: "for a leader outside the caller's prefixes",
		run: func(b *bad) func(context.Context) error { return resignCall(b, b.hold(string(b.name("re")), "v")) }},
	{rpc: "Observe", what: "election outside the caller's prefixes",
		run: func(b *bad) func(context.Context) error { return observeCall(b, b.name("oe")) }},
	{rpc: "Range", what: "the whole keyspace",
		run: func(b *bad) func(context.Context) error {
			return func(ctx context.Context) error {
				_, err := pb.NewKVClient(b.to.cli.ActiveConnection()).Range(ctx, &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}})
				return err
			}
		}},
	{rpc: "Put", what: "a key outside the caller's prefixes",
		run: func(b *bad) func(context.Context) error {
			return func(ctx context.Context) error {
				_, err := pb.NewKVClient(b.to.cli.ActiveConnection()).Put(ctx, &pb.PutRequest{Key: b.name("k"), Value: []byte("v")})
				return err
			}
		}},
	{rpc: "DeleteRange", what: "everything from the caller's prefix on",
		run: func(b *bad) func(context.Context) error {
			return func(ctx context.Context) error {
				_, err := pb.NewKVClient(b.to.cli.ActiveConnection()).DeleteRange(ctx, &pb.DeleteRangeRequest{Key: []byte("mine/"), RangeEnd: []byte{0}})
				return err
			}
		}},
	{rpc: "Txn", what: "a write inside and one outside the caller's prefixes",
		run: func(b *bad) func(context.Context) error {
			return func(ctx context.Context) error {
				_, err := pb.NewKVClient(b.to.cli.ActiveConnection()).Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{
					{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("mine/ok"), Value: []byte("v")}}},
					{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: b.name("no"), Value: []byte("v")}}},
				}})
				return err
			}
		}},
	{rpc: "LeaseRevoke", what: "a lease granted straight at etcd (leases.unrecorded: deny)",
		run: func(b *bad) func(context.Context) error {
			lease := b.lease()
			return func(ctx context.Context) error {
				_, err := b.to.lease.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: lease})
				return err
			}
		}},
	{rpc: "Lock", what: "inside the caller's prefix on a lease granted straight at etcd (leases.unrecorded: deny)",
		run: func(b *bad) func(context.Context) error { return lockCall(b, []byte("mine/"+b.root), b.lease()) }},
}

func TestBadInput_refusedByThePolicy(t *testing.T) {
	doc, err := os.ReadFile("../docs/reliability.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, bc := range refusalCases {
		if !strings.Contains(string(doc), fmt.Sprintf("| %s | %s |", bc.rpc, bc.what)) {
			t.Errorf("docs/reliability.md's refusals table has no row for %s %q", bc.rpc, bc.what)
		}
	}
	policyFile := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(policyFile, []byte(refusalPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	c := startCluster(t, 1)
	ps := startProxies(t, c, 1, "--policy", policyFile)
	kv := c.client()
	defer kv.Close()
	proxied := newTarget(t, "coordproxy", []string{ps[0].addr})
	var rows []map[string]any
	for i, bc := range refusalCases {
		t.Run(bc.rpc+"/"+bc.what, func(t *testing.T) {
			p := runBad(t, kv, proxied, fmt.Sprintf("refused%02d", i), bc, time.Second)
			rows = append(rows, map[string]any{"rpc": bc.rpc, "case": bc.what, "coordproxy": p})
			for _, ch := range p.Changed {
				t.Errorf("a refused call changed the keyspace: %s", ch)
			}
			if p.Code != codes.PermissionDenied.String() || p.Message != permissionDenied {
				t.Errorf("coordproxy answered %s; want PermissionDenied %q", p.status(), permissionDenied)
			}
		})
	}
	if n := proxyMetric(t, ps[0].addr, "coordproxy_denied_total", nil); n < float64(len(refusalCases)) {
		t.Errorf("%v refusals counted, want at least %d", n, len(refusalCases))
	}
	writeReport(t, "bad_input_refused", rows)
}
