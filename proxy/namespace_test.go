package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
)

// Two proxies with different namespaces in front of one etcd: each one's
// callers (Lock, Election, KV, Watch, Lease, and concurrency's recipes over
// KV and Watch) see only their own namespace, keys without its prefix, and
// cannot read, write, watch or unlock anything outside it.
func TestNamespace_isolatesTwoProxiesOnOneEtcd(t *testing.T) {
	etcd := proxytest.StartEtcd(t)
	root := proxytest.Client(t, etcd.URL)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	type side struct {
		ns   string
		kv   *clientv3.Client
		lock v3lockpb.LockClient
		elec v3electionpb.ElectionClient
	}
	var sides [2]side
	for i, ns := range []string{"tenant-a/", "tenant-b/"} {
		p := proxytest.StartProxy(t, []string{etcd.URL}, proxy.Config{Namespace: ns})
		conn := proxytest.Dial(t, p.Addr().String())
		sides[i] = side{ns, proxytest.Client(t, "http://"+p.Addr().String()), v3lockpb.NewLockClient(conn), v3electionpb.NewElectionClient(conn)}
	}
	a, b := sides[0], sides[1]
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	grant := func(s side) clientv3.LeaseID {
		resp, err := s.kv.Grant(ctx, 60)
		must(err)
		return resp.ID
	}
	_, err := root.Put(ctx, "outside", "x")
	must(err)

	// The same lock name in both namespaces: both are granted at once.
	la, lb := grant(a), grant(b)
	bounded, bcancel := context.WithTimeout(ctx, 10*time.Second)
	defer bcancel()
	ra, err := a.lock.Lock(bounded, &v3lockpb.LockRequest{Name: []byte("job"), Lease: int64(la)})
	must(err)
	rb, err := b.lock.Lock(bounded, &v3lockpb.LockRequest{Name: []byte("job"), Lease: int64(lb)})
	must(err)
	if want := fmt.Sprintf("job/%x", la); string(ra.Key) != want {
		t.Fatalf("Lock through a answered key %q, want %q", ra.Key, want)
	}
	// Unlocking a's key through b cannot reach a's lock.
	b.lock.Unlock(ctx, &v3lockpb.UnlockRequest{Key: ra.Key})
	if got := rootKeys(t, root, "tenant-a/job/"); len(got) != 1 {
		t.Fatalf("a's lock after an Unlock of its key through b: %v", got)
	}
	// concurrency.Mutex through each proxy sees its own namespace's holder.
	for _, s := range sides {
		sess, err := concurrency.NewSession(s.kv, concurrency.WithTTL(30))
		must(err)
		if err := concurrency.NewMutex(sess, "job").TryLock(ctx); !errors.Is(err, concurrency.ErrLocked) {
			t.Fatalf("%s: TryLock of a held lock: %v, want %v", s.ns, err, concurrency.ErrLocked)
		}
		sess.Close()
	}
	_, err = b.lock.Unlock(ctx, &v3lockpb.UnlockRequest{Key: rb.Key})
	must(err)

	// Elections: one leader per namespace.
	ca, err := a.elec.Campaign(bounded, &v3electionpb.CampaignRequest{Name: []byte("e"), Lease: int64(la), Value: []byte("leader-a")})
	must(err)
	_, err = b.elec.Campaign(bounded, &v3electionpb.CampaignRequest{Name: []byte("e"), Lease: int64(lb), Value: []byte("leader-b")})
	must(err)
	lr, err := b.elec.Leader(ctx, &v3electionpb.LeaderRequest{Name: []byte("e")})
	must(err)
	if string(lr.Kv.Value) != "leader-b" || string(lr.Kv.Key) != fmt.Sprintf("e/%x", lb) {
		t.Fatalf("b's leader: %s=%s", lr.Kv.Key, lr.Kv.Value)
	}
	if string(ca.Leader.Key) != fmt.Sprintf("e/%x", la) {
		t.Fatalf("a's leader key %q", ca.Leader.Key)
	}

	// KV and Watch: a watch of everything through a sees only a's writes.
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	wch := a.kv.Watch(clientv3.WithRequireLeader(wctx), "", clientv3.WithFromKey())
	for _, s := range sides {
		_, err = s.kv.Put(ctx, "k", "from "+s.ns, clientv3.WithLease(la)) // la is a's lease: b may attach keys to it too
		must(err)
	}
	_, err = root.Put(ctx, "outside", "y")
	must(err)
	_, err = a.kv.Put(ctx, "w", "last")
	must(err)
	var seen []string
	for len(seen) < 2 {
		wr := <-wch
		must(wr.Err())
		for _, ev := range wr.Events {
			seen = append(seen, string(ev.Kv.Key)+"="+string(ev.Kv.Value))
		}
	}
	if want := []string{"k=from tenant-a/", "w=last"}; fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Fatalf("watch of everything through a saw %v, want %v", seen, want)
	}
	resp, err := a.kv.Get(ctx, "", clientv3.WithFromKey())
	must(err)
	var got []string
	for _, kv := range resp.Kvs {
		got = append(got, string(kv.Key))
	}
	want := []string{fmt.Sprintf("e/%x", la), fmt.Sprintf("job/%x", la), "k", "w"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("everything through a: %v, want %v", got, want)
	}
	// A streamed range (etcd 3.7's RangeStream) of everything, the same.
	st, err := a.kv.GetStream(ctx, "", clientv3.WithFromKey())
	must(err)
	sresp, err := clientv3.GetStreamToGetResponse(st)
	must(err)
	got = nil
	for _, kv := range sresp.Kvs {
		got = append(got, string(kv.Key))
	}
	if fmt.Sprint(got) != fmt.Sprint(want) || sresp.Count != int64(len(want)) {
		t.Fatalf("everything streamed through a: %v (count %d), want %v", got, sresp.Count, want)
	}
	if st, err := a.kv.GetStream(ctx, ""); err == nil {
		_, err = clientv3.GetStreamToGetResponse(st)
		if err == nil || err.Error() != "etcdserver: key is not provided" {
			t.Fatalf("streamed range of the empty key through a: %v, want etcd's \"key is not provided\"", err)
		}
	}
	tr, err := a.kv.Txn(ctx).If(clientv3.Compare(clientv3.Value("k"), "=", "from tenant-a/")).Then(clientv3.OpPut("k", "txn", clientv3.WithIgnoreLease())).Commit()
	must(err)
	if !tr.Succeeded {
		t.Fatal("txn through a compared another namespace's key")
	}
	ttl, err := a.kv.TimeToLive(ctx, la, clientv3.WithAttachedKeys())
	must(err)
	var lkeys []string
	for _, k := range ttl.Keys {
		lkeys = append(lkeys, string(k))
	}
	sort.Strings(lkeys)
	if want := []string{fmt.Sprintf("e/%x", la), fmt.Sprintf("job/%x", la), "k"}; fmt.Sprint(lkeys) != fmt.Sprint(want) {
		t.Fatalf("a's lease keys through a: %v, want %v (b's key on the same lease hidden)", lkeys, want)
	}

	// Deleting everything through b leaves a's keys and keys outside.
	_, err = b.kv.Delete(ctx, "", clientv3.WithFromKey())
	must(err)
	if got := rootKeys(t, root, ""); fmt.Sprint(got) != fmt.Sprint([]string{"outside", "tenant-a/" + want[0], "tenant-a/" + want[1], "tenant-a/k", "tenant-a/w"}) {
		t.Fatalf("etcd after deleting everything through b: %v", got)
	}
}

func rootKeys(t *testing.T, root *clientv3.Client, prefix string) []string {
	t.Helper()
	resp, err := root.Get(context.Background(), prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if prefix == "" {
		resp, err = root.Get(context.Background(), "", clientv3.WithFromKey(), clientv3.WithKeysOnly())
	}
	if err != nil {
		t.Fatal(err)
	}
	var ks []string
	for _, kv := range resp.Kvs {
		ks = append(ks, string(kv.Key))
	}
	return ks
}
