package etcdio_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/etcdio"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"
)

// The batcher is tested over a real etcd: transactions are queued behind a
// group held busy (etcdio.HoldBatches), then released as batches.

func dial(t *testing.T) (*etcdio.Etcd, *clientv3.Client, *prometheus.Registry) {
	return dialBatching(t, etcdio.BatchConcurrent)
}

func dialBatching(t *testing.T, mode etcdio.Batching) (*etcdio.Etcd, *clientv3.Client, *prometheus.Registry) {
	t.Helper()
	etcd := proxytest.StartEtcd(t)
	reg := prometheus.NewRegistry()
	e, err := etcdio.Dial(context.Background(), etcdio.Config{Endpoints: []string{etcd.URL}, Registry: reg, Batching: mode})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e, proxytest.Client(t, etcd.URL), reg
}

func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

// putIfAbsent is a lock's create transaction: put key unless it exists.
func putIfAbsent(key string, lease clientv3.LeaseID, prefix string) etcdio.Txn {
	return etcdio.Txn{
		If:     []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", 0)},
		Then:   []clientv3.Op{clientv3.OpPut(key, "", clientv3.WithLease(lease)), clientv3.OpGet(prefix, clientv3.WithFirstCreate()...)},
		Else:   []clientv3.Op{clientv3.OpGet(key), clientv3.OpGet(prefix, clientv3.WithFirstCreate()...)},
		Prefix: prefix,
	}
}

type sent struct {
	call *proxytest.Call
	resp *clientv3.TxnResponse
}

// queue sends t in the background and waits until it waits for a batch.
func queue(t *testing.T, e *etcdio.Etcd, ctx context.Context, txn etcdio.Txn, pending int) *sent {
	t.Helper()
	s := &sent{}
	s.call = proxytest.Go(func() (err error) {
		s.resp, err = e.SendTxn(ctx, txn)
		return err
	})
	proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
		n := etcdio.Pending(e, ctx)
		return n == pending, fmt.Sprintf("%d pending, want %d", n, pending)
	})
	return s
}

// Sixteen lock transactions queued together go as one etcd request; one of
// them on a revoked lease fails etcd's whole batch, and then each is sent
// alone: only that caller gets etcd's error, with etcd's text, and the
// others their own answers.
func TestSendTxn_oneFailingTransactionFailsOnlyItsCaller(t *testing.T) {
	e, kv, reg := dial(t)
	ctx := proxytest.Ctx(t)
	good, err := kv.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	revoked, err := kv.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Revoke(ctx, revoked.ID); err != nil {
		t.Fatal(err)
	}

	// First a batch that etcd takes: sixteen names, one request.
	release := etcdio.HoldBatches(e, ctx)
	var calls []*sent
	for i := range 16 {
		name := fmt.Sprintf("ok%d/", i)
		calls = append(calls, queue(t, e, ctx, putIfAbsent(name+"k", good.ID, name), i+1))
	}
	release()
	var rev int64
	for i, c := range calls {
		if err := c.call.Wait(t); err != nil {
			t.Fatalf("transaction %d: %v", i, err)
		}
		if !c.resp.Succeeded || len(c.resp.Responses) != 2 || c.resp.Responses[1].GetResponseRange().Kvs[0].CreateRevision != c.resp.Header.Revision {
			t.Fatalf("transaction %d answered %v", i, c.resp)
		}
		if rev == 0 {
			rev = c.resp.Header.Revision
		}
		if c.resp.Header.Revision != rev {
			t.Fatalf("transaction %d at revision %d, the batch's at %d", i, c.resp.Header.Revision, rev)
		}
	}
	if n := counter(t, reg, "coordproxy_etcd_batches_total"); n != 1 {
		t.Fatalf("%v batches, want 1", n)
	}

	// Then one with a revoked lease among them.
	release = etcdio.HoldBatches(e, ctx)
	calls = nil
	for i := range 16 {
		name, lease := fmt.Sprintf("mixed%d/", i), good.ID
		if i == 7 {
			lease = revoked.ID
		}
		calls = append(calls, queue(t, e, ctx, putIfAbsent(name+"k", lease, name), i+1))
	}
	release()
	for i, c := range calls {
		err := c.call.Wait(t)
		if i == 7 {
			if !errors.Is(err, rpctypes.ErrLeaseNotFound) || err.Error() != rpctypes.ErrLeaseNotFound.Error() {
				t.Fatalf("transaction on the revoked lease: %v, want etcd's %q", err, rpctypes.ErrLeaseNotFound)
			}
			continue
		}
		if err != nil || !c.resp.Succeeded {
			t.Fatalf("transaction %d: %v, %v", i, c.resp, err)
		}
	}
	if n := counter(t, reg, "coordproxy_etcd_batches_total"); n != 1 {
		t.Fatalf("%v batches after the failed one, want still 1 (its transactions went alone)", n)
	}
}

// Transactions whose prefixes nest, or are the same, never share a batch:
// two keys created in one revision would tie a queue's order. The others
// do, up to 64 a batch.
func TestSendTxn_nestedPrefixesNeverShareABatchAndBatchesAreCapped(t *testing.T) {
	e, kv, reg := dial(t)
	ctx := proxytest.Ctx(t)
	lease, err := kv.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	release := etcdio.HoldBatches(e, ctx)
	a := queue(t, e, ctx, putIfAbsent("a/1", lease.ID, "a/"), 1)
	ab := queue(t, e, ctx, putIfAbsent("a/b/1", lease.ID, "a/b/"), 2)
	a2 := queue(t, e, ctx, putIfAbsent("a/2", lease.ID, "a/"), 3)
	var others []*sent
	for i := range 100 {
		name := fmt.Sprintf("o%d/", i)
		others = append(others, queue(t, e, ctx, putIfAbsent(name+"k", lease.ID, name), 4+i))
	}
	release()
	for _, s := range append([]*sent{a, ab, a2}, others...) {
		if err := s.call.Wait(t); err != nil {
			t.Fatal(err)
		}
	}
	revs := map[int64]int{}
	for _, s := range append([]*sent{a, ab, a2}, others...) {
		revs[s.resp.Header.Revision]++
	}
	if a.resp.Header.Revision == ab.resp.Header.Revision || a.resp.Header.Revision == a2.resp.Header.Revision || ab.resp.Header.Revision == a2.resp.Header.Revision {
		t.Fatalf("nested or equal prefixes shared a revision: a/ %d, a/b/ %d, a/ again %d", a.resp.Header.Revision, ab.resp.Header.Revision, a2.resp.Header.Revision)
	}
	for rev, n := range revs {
		if n > 64 {
			t.Fatalf("%d transactions in the batch at revision %d, want at most 64", n, rev)
		}
	}
	// 103 transactions: a/, a/b/ and a/ again need three batches, the 64
	// cap two: a/ with 63 others, a/b/ with the other 37, a/ again alone
	// (sent as it is, not counted as a batch).
	if n := counter(t, reg, "coordproxy_etcd_batches_total"); n != 2 {
		t.Fatalf("%v batches for 103 transactions, want 2", n)
	}
}

// Requests under different credentials never share a batch: a caller's
// token goes only with its own request. One queued behind a busy group of
// another token, or of none, is sent at once.
func TestSendTxn_otherCredentialsAreNeverBatchedTogether(t *testing.T) {
	e, kv, reg := dial(t)
	ctx := proxytest.Ctx(t)
	lease, err := kv.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	alice := metadata.AppendToOutgoingContext(ctx, rpctypes.TokenFieldNameGRPC, "alice-token")
	bob := metadata.AppendToOutgoingContext(ctx, rpctypes.TokenFieldNameGRPC, "bob-token")
	release := etcdio.HoldBatches(e, alice)
	defer release()
	w := queue(t, e, alice, putIfAbsent("alice/k", lease.ID, "alice/"), 1)
	// etcd without auth ignores the tokens; what matters is where they go.
	for _, other := range []context.Context{bob, ctx} {
		c := proxytest.Go(func() error {
			_, err := e.SendTxn(other, putIfAbsent("bob/k", lease.ID, "bob/"))
			return err
		})
		if err := c.Wait(t); err != nil { // fails if it queued behind alice's
			t.Fatal(err)
		}
	}
	if w.call.Returned() || etcdio.Pending(e, alice) != 1 {
		t.Fatal("alice's transaction went with another caller's")
	}
	if n := counter(t, reg, "coordproxy_etcd_batches_total"); n != 0 {
		t.Fatalf("%v batches, want none", n)
	}
}

// Tenants (callers' identities) never share a batch: one queued behind a
// busy tenant's group is sent at once, and the busy tenant's queued ones
// still wait for their own round. Flows that are not tenants share.
func TestSendTxn_tenantsHaveBatchesOfTheirOwn(t *testing.T) {
	e, kv, _ := dial(t)
	ctx := proxytest.Ctx(t)
	lease, err := kv.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	a := etcdio.WithFlow(ctx, etcdio.Tenant("tenant-a"), etcdio.PriorityAcquire)
	b := etcdio.WithFlow(ctx, etcdio.Tenant("tenant-b"), etcdio.PriorityAcquire)
	release := etcdio.HoldBatches(e, a)
	defer release()
	w := queue(t, e, a, putIfAbsent("a/k", lease.ID, "a/"), 1)
	c := proxytest.Go(func() error {
		_, err := e.SendTxn(b, putIfAbsent("b/k", lease.ID, "b/"))
		return err
	})
	if err := c.Wait(t); err != nil { // fails if it queued behind tenant A's
		t.Fatal(err)
	}
	if w.call.Returned() || etcdio.Pending(e, a) != 1 {
		t.Fatal("tenant A's transaction went with tenant B's")
	}
	// Two connections (flows that are not tenants) share a group.
	conn1 := etcdio.WithFlow(ctx, "conn-1", etcdio.PriorityAcquire)
	conn2 := etcdio.WithFlow(ctx, "conn-2", etcdio.PriorityAcquire)
	releaseConns := etcdio.HoldBatches(e, conn1)
	queue(t, e, conn2, putIfAbsent("c/k", lease.ID, "c/"), 1)
	releaseConns()
}

// With BatchAlways a transaction alone goes nested too, and answers as it
// would alone: its compares decide, a failure is etcd's own answer to it.
func TestSendTxn_batchAlwaysNestsALoneTransactionAndAnswersAsAlone(t *testing.T) {
	e, kv, _ := dialBatching(t, etcdio.BatchAlways)
	ctx := proxytest.Ctx(t)
	lease, err := kv.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	first, err := e.SendTxn(ctx, putIfAbsent("n/k", lease.ID, "n/"))
	if err != nil || !first.Succeeded || first.Responses[1].GetResponseRange().Kvs[0].CreateRevision != first.Header.Revision {
		t.Fatalf("first put: %v, %v", first, err)
	}
	again, err := e.SendTxn(ctx, putIfAbsent("n/k", lease.ID, "n/"))
	if err != nil || again.Succeeded || again.Responses[0].GetResponseRange().Kvs[0].CreateRevision != first.Header.Revision {
		t.Fatalf("put again: %v, %v (want the Else branch with the first key)", again, err)
	}
	if n := etcdio.Nested(e); n != 2 {
		t.Fatalf("%d nested requests, want 2", n)
	}
	if _, err := kv.Revoke(ctx, lease.ID); err != nil {
		t.Fatal(err)
	}
	_, err = e.SendTxn(ctx, putIfAbsent("m/k", lease.ID, "m/"))
	if !errors.Is(err, rpctypes.ErrLeaseNotFound) || err.Error() != rpctypes.ErrLeaseNotFound.Error() {
		t.Fatalf("put on a revoked lease: %v, want etcd's %q", err, rpctypes.ErrLeaseNotFound)
	}
	if n := etcdio.Nested(e); n != 3 {
		t.Fatalf("%d nested requests, want 3 (the failed one is sent nested, then alone)", n)
	}
}

// A round takes what queued as the slots to etcd are shared: by priority,
// then the flows in turn. 300 acquisitions of one flow queued first do not
// push another flow's one, or a release, into a later round.
func TestSendTxn_aRoundTakesPrioritiesThenFlowsInTurn(t *testing.T) {
	e, kv, _ := dial(t)
	ctx := proxytest.Ctx(t)
	lease, err := kv.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	a := etcdio.WithFlow(ctx, "tenant-a", etcdio.PriorityAcquire)
	release := etcdio.HoldBatches(e, a)
	var flood []*sent
	for i := range 300 {
		name := fmt.Sprintf("a%03d/", i)
		flood = append(flood, queue(t, e, a, putIfAbsent(name+"k", lease.ID, name), i+1))
	}
	other := queue(t, e, etcdio.WithFlow(ctx, "tenant-b", etcdio.PriorityAcquire), putIfAbsent("b/k", lease.ID, "b/"), 301)
	rel := queue(t, e, etcdio.WithFlow(ctx, "tenant-a", etcdio.PriorityRelease), putIfAbsent("r/k", lease.ID, "r/"), 302)
	release()
	var last int64
	for _, s := range append(flood, other, rel) {
		if err := s.call.Wait(t); err != nil {
			t.Fatal(err)
		}
		last = max(last, s.resp.Header.Revision)
	}
	// Rounds go one after the other: the first round's revisions are all
	// below the second's. 302 transactions make two rounds.
	for name, s := range map[string]*sent{"the other flow's acquisition": other, "the release": rel} {
		if s.resp.Header.Revision >= last {
			t.Errorf("%s went in the last round (revision %d of %d), behind the flood", name, s.resp.Header.Revision, last)
		}
	}
}

// After a round that took etcd long (here: any, GatherLong), the callers it
// answered come back with their next transactions while the group pauses,
// and go with those already waiting as one round: two transactions sent
// one after the other during the pause share one etcd request, where
// otherwise the first would go alone at once.
func TestSendTxn_aSlowRoundGathersTheNextOne(t *testing.T) {
	e, cli, reg := dial(t)
	etcdio.GatherLong(e)
	ctx := context.Background()
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	release := etcdio.HoldBatches(e, ctx)
	first := []*sent{
		queue(t, e, ctx, putIfAbsent("/g/a/1", lease.ID, "/g/a/"), 1),
		queue(t, e, ctx, putIfAbsent("/g/b/1", lease.ID, "/g/b/"), 2),
	}
	release()
	for _, s := range first {
		if err := s.call.Wait(t); err != nil {
			t.Fatal(err)
		}
	}
	if n := counter(t, reg, "coordproxy_etcd_batches_total"); n != 1 {
		t.Fatalf("%v batches for the first round, want 1", n)
	}
	proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
		return etcdio.Gathering(e, ctx), "the group does not gather after a round of two"
	})
	second := []*sent{
		queue(t, e, ctx, putIfAbsent("/g/a/2", lease.ID, "/g/a/"), 1),
		queue(t, e, ctx, putIfAbsent("/g/b/2", lease.ID, "/g/b/"), 2),
	}
	etcdio.EndGather(e, ctx)
	for _, s := range second {
		if err := s.call.Wait(t); err != nil {
			t.Fatal(err)
		}
		if !s.resp.Succeeded {
			t.Errorf("transaction of the gathered round not applied: %v", s.resp)
		}
	}
	if n := counter(t, reg, "coordproxy_etcd_batches_total"); n != 2 {
		t.Fatalf("%v batches after the gathered round, want 2 (its two transactions in one)", n)
	}
	if n := counter(t, reg, "coordproxy_etcd_batch_gathers_total"); n != 1 {
		t.Fatalf("%v gathers counted, want 1", n)
	}
}

// A transaction that went alone is never followed by a pause, however long
// etcd took (GatherLong): at low load nothing waits.
func TestSendTxn_aLoneTransactionIsNotFollowedByAPause(t *testing.T) {
	e, cli, _ := dial(t)
	etcdio.GatherLong(e)
	ctx := context.Background()
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := e.SendTxn(ctx, putIfAbsent(fmt.Sprintf("/l/%d/k", i), lease.ID, fmt.Sprintf("/l/%d/", i))); err != nil {
			t.Fatal(err)
		}
		if etcdio.Gathering(e, ctx) {
			t.Fatalf("the group pauses after lone transaction %d", i)
		}
	}
}
