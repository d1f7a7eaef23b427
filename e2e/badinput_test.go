package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// target is where a bad-input case is sent: etcd's native services on the
// members, or coordproxy.
type target struct {
	name  string
	cli   *clientv3.Client
	lock  v3lockpb.LockClient
	elec  epb.ElectionClient
	lease pb.LeaseClient
}

func newTarget(t *testing.T, name string, endpoints []string) *target {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		MaxCallSendMsgSize: 16 << 20, MaxCallRecvMsgSize: 16 << 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	conn := cli.ActiveConnection()
	return &target{name: name, cli: cli, lock: v3lockpb.NewLockClient(conn), elec: epb.NewElectionClient(conn), lease: pb.NewLeaseClient(conn)}
}

// bad is one run of one case against one target. Fixtures are made with a
// direct etcd client, in the key layout concurrency uses.
type bad struct {
	t      *testing.T
	kv     *clientv3.Client
	to     *target
	root   string // unique per case and target: names start with it
	leases []clientv3.LeaseID
	wrong  []string // what the response got wrong, if anything
}

// nextLeaseID numbers the fixtures' leases. etcd picks lease IDs whose
// varint length varies, which changes a request's size by a byte; a case
// that reports a size (over the gRPC message limit) must see the same on
// both targets, so the fixtures name IDs of one length (2^62 and up).
var nextLeaseID atomic.Int64

func init() { nextLeaseID.Store(1 << 62) }

// lease grants a fresh lease of a minute.
func (b *bad) lease() int64 {
	id := nextLeaseID.Add(1)
	_, err := pb.NewLeaseClient(b.kv.ActiveConnection()).LeaseGrant(context.Background(), &pb.LeaseGrantRequest{TTL: 60, ID: id})
	if err != nil {
		b.t.Fatal(err)
	}
	b.leases = append(b.leases, clientv3.LeaseID(id))
	return id
}

func (b *bad) revokedLease() int64 {
	id := b.lease()
	if _, err := b.kv.Revoke(context.Background(), clientv3.LeaseID(id)); err != nil {
		b.t.Fatal(err)
	}
	return id
}

// put writes key (on lease, if not 0) and returns its create revision.
func (b *bad) put(key, val string, lease int64) int64 {
	var opts []clientv3.OpOption
	if lease != 0 {
		opts = append(opts, clientv3.WithLease(clientv3.LeaseID(lease)))
	}
	r, err := b.kv.Put(context.Background(), key, val, opts...)
	if err != nil {
		b.t.Fatal(err)
	}
	return r.Header.Revision
}

// hold makes a lease hold name, as a Lock or Campaign would: the key is
// name/hex(lease) on that lease.
func (b *bad) hold(name, val string) *epb.LeaderKey {
	lease := b.lease()
	key := fmt.Sprintf("%s/%x", name, lease)
	rev := b.put(key, val, lease)
	return &epb.LeaderKey{Name: []byte(name), Key: []byte(key), Rev: rev, Lease: lease}
}

// expect records a wrong response.
func (b *bad) expect(ok bool, format string, args ...any) {
	if !ok {
		b.wrong = append(b.wrong, fmt.Sprintf(format, args...))
	}
}

// unlock releases a key a successful call returned, so that a case leaves
// the keyspace as it found it.
func (b *bad) unlock(key []byte) {
	if _, err := b.kv.Delete(context.Background(), string(key)); err != nil {
		b.t.Fatal(err)
	}
}

func (b *bad) teardown() {
	ctx := context.Background()
	for _, id := range b.leases {
		b.kv.Revoke(ctx, id)
	}
	if _, err := b.kv.Delete(ctx, "\x00", clientv3.WithFromKey()); err != nil {
		b.t.Fatal(err)
	}
}

// snapshot is the whole keyspace, one line per key.
func (b *bad) snapshot() []string {
	r, err := b.kv.Get(context.Background(), "\x00", clientv3.WithFromKey())
	if err != nil {
		b.t.Fatal(err)
	}
	var out []string
	for _, kv := range r.Kvs {
		out = append(out, kvLine(kv))
	}
	return out
}

func kvLine(kv *mvccpb.KeyValue) string {
	k := string(kv.Key)
	if len(k) > 40 {
		k = fmt.Sprintf("%.40q…(%d bytes)", k, len(kv.Key))
	} else {
		k = fmt.Sprintf("%q", k)
	}
	return fmt.Sprintf("%s create=%d mod=%d lease=%x value=%d bytes", k, kv.CreateRevision, kv.ModRevision, kv.Lease, len(kv.Value))
}

// diff says what changed between two snapshots.
func diff(before, after []string) []string {
	var d []string
	for _, l := range before {
		if !slices.Contains(after, l) {
			d = append(d, "- "+l)
		}
	}
	for _, l := range after {
		if !slices.Contains(before, l) {
			d = append(d, "+ "+l)
		}
	}
	return d
}

// badCase is one row of the bad-input table. run makes the fixtures and
// returns the call; the call must leave the keyspace as it was (a successful
// call releases what it took through b.unlock). same says the case is one
// etcd defines: coordproxy must answer exactly as etcd's own services do.
// Otherwise code and msg are coordproxy's answer, and etcd's is reported.
type badCase struct {
	rpc, what string
	run       func(b *bad) func(ctx context.Context) error
	same      bool
	code      codes.Code
	msg       string
	deadline  time.Duration // default callDeadline
}

// Sizes: etcd's default --max-request-bytes is 1.5 MiB; its gRPC servers
// take messages up to that plus 512 KiB, as coordproxy's does.
const (
	overRequestLimit = 1536*1024 + 1024 // over etcd's request limit, under gRPC's
	overGRPCLimit    = 2<<20 + 1024     // over both
)

var (
	errNotOwnerKey   = `"key" field is not a lock ownership key: want <name>/<lease ID in hex> of a key attached to that lease`
	errForeignLeader = `"leader.key" field is not a candidate key of "leader.name": want <name>/<lease ID in hex>`
)

func lockCall(b *bad, name []byte, lease int64) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		r, err := b.to.lock.Lock(ctx, &v3lockpb.LockRequest{Name: name, Lease: lease})
		if err == nil {
			if lease != 0 {
				want := fmt.Sprintf("%s/%x", name, lease)
				b.expect(string(r.Key) == want, "Lock key %q, want %q", r.Key, want)
			}
			b.expect(r.Header != nil && r.Header.Revision > 0, "Lock header %v", r.Header)
			b.unlock(r.Key)
		}
		return err
	}
}

func campaignCall(b *bad, name []byte, lease int64, val []byte) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		r, err := b.to.elec.Campaign(ctx, &epb.CampaignRequest{Name: name, Lease: lease, Value: val})
		if err == nil {
			b.expect(r.Leader != nil && bytes.Equal(r.Leader.Name, name) && r.Leader.Rev > 0, "Campaign leader %v", r.Leader)
			if r.Leader != nil {
				b.unlock(r.Leader.Key)
			}
		}
		return err
	}
}

func unlockCall(b *bad, key []byte) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		_, err := b.to.lock.Unlock(ctx, &v3lockpb.UnlockRequest{Key: key})
		return err
	}
}

func proclaimCall(b *bad, lk *epb.LeaderKey, val []byte) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		_, err := b.to.elec.Proclaim(ctx, &epb.ProclaimRequest{Leader: lk, Value: val})
		return err
	}
}

func resignCall(b *bad, lk *epb.LeaderKey) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		_, err := b.to.elec.Resign(ctx, &epb.ResignRequest{Leader: lk})
		return err
	}
}

func observeCall(b *bad, name []byte) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		s, err := b.to.elec.Observe(ctx, &epb.LeaderRequest{Name: name})
		if err != nil {
			return err
		}
		r, err := s.Recv()
		if err == nil {
			return fmt.Errorf("observed %q on a name without leader", r.Kv.Key)
		}
		return err
	}
}

// withName returns name with b's root in front, keeping its shape.
func (b *bad) name(suffix string) []byte { return []byte(b.root + suffix) }

func repeat(n int) []byte { return bytes.Repeat([]byte("x"), n) }

// outcome is what one target did with one case.
type outcome struct {
	Code    string   `json:"code"`
	Message string   `json:"message"`
	Changed []string `json:"changed,omitempty"` // keyspace changes the call left
	Wrong   []string `json:"wrong,omitempty"`
}

func (o outcome) status() string {
	if o.Code == codes.OK.String() {
		return "OK"
	}
	return fmt.Sprintf("%s %q", o.Code, o.Message)
}

// runBad runs c against to. For coordproxy it waits (up to the request
// timeout and a little) for the keyspace to settle back, as background
// cleanups may take that long; etcd's own services are given a moment.
func runBad(t *testing.T, kv *clientv3.Client, to *target, root string, c badCase, settle time.Duration) outcome {
	b := &bad{t: t, kv: kv, to: to, root: root}
	defer b.teardown()
	call := c.run(b)
	before := b.snapshot()
	d := c.deadline
	if d == 0 {
		d = callDeadline
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	err := call(ctx)
	cancel()
	st := status.Convert(err)
	if errors.Is(err, context.DeadlineExceeded) || st.Code() == codes.DeadlineExceeded {
		// The client's own verdict; gRPC words it after whichever of its
		// timer and the stream's reset came first.
		st = status.New(codes.DeadlineExceeded, context.DeadlineExceeded.Error())
	}
	var changed []string
	for end := time.Now().Add(settle); ; time.Sleep(20 * time.Millisecond) {
		changed = diff(before, b.snapshot())
		if len(changed) == 0 || time.Now().After(end) {
			break
		}
	}
	msg := st.Message()
	if len(msg) > 200 {
		msg = msg[:200] + "…"
	}
	return outcome{Code: st.Code().String(), Message: msg, Changed: changed, Wrong: b.wrong}
}

// TestBadInput sends every case of the table to etcd's native services and
// to coordproxy, in front of the same 3-member cluster. coordproxy must give
// etcd's answer where etcd defines one, a clear InvalidArgument where etcd
// misbehaves, and leave the keyspace as it was: nothing deleted, nothing left.
func TestBadInput(t *testing.T) {
	if len(badCases) < 40 {
		t.Fatalf("the table has %d cases; the issue asks for at least 40", len(badCases))
	}
	doc, err := os.ReadFile("../docs/reliability.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, bc := range badCases {
		if !strings.Contains(string(doc), fmt.Sprintf("| %s | %s |", bc.rpc, bc.what)) {
			t.Errorf("docs/reliability.md's bad-input table has no row for %s %q", bc.rpc, bc.what)
		}
	}
	c := startCluster(t, 3)
	ps := startProxies(t, c, 1)
	kv := c.client()
	defer kv.Close()
	native := newTarget(t, "etcd", c.endpoints())
	proxied := newTarget(t, "coordproxy", []string{ps[0].addr})

	type row struct {
		RPC        string  `json:"rpc"`
		Case       string  `json:"case"`
		Same       bool    `json:"same_as_etcd"`
		Etcd       outcome `json:"etcd"`
		Coordproxy outcome `json:"coordproxy"`
	}
	var rows []row
	for i, bc := range badCases {
		t.Run(bc.rpc+"/"+bc.what, func(t *testing.T) {
			root := fmt.Sprintf("bad%02d", i)
			n := runBad(t, kv, native, root+"n", bc, 300*time.Millisecond)
			p := runBad(t, kv, proxied, root+"p", bc, requestTimeout+3*time.Second)
			rows = append(rows, row{bc.rpc, bc.what, bc.same, n, p})
			t.Logf("etcd: %s %v; coordproxy: %s", n.status(), n.Changed, p.status())

			for _, w := range p.Wrong {
				t.Errorf("coordproxy answered wrongly: %s", w)
			}
			for _, ch := range p.Changed {
				t.Errorf("coordproxy left the keyspace changed: %s", ch)
			}
			if bc.same {
				if p.Code != n.Code || p.Message != n.Message {
					t.Errorf("coordproxy answered %s; etcd answers %s", p.status(), n.status())
				}
				if len(n.Wrong) > 0 {
					t.Errorf("etcd itself answered wrongly, so the case is not etcd's: %v", n.Wrong)
				}
				return
			}
			if p.Code != bc.code.String() || p.Message != bc.msg {
				t.Errorf("coordproxy answered %s; want %s %q", p.status(), bc.code, bc.msg)
			}
		})
	}
	writeReport(t, "bad_input", rows)
}
