package proxy_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// coordproxy's own services under --namespace: TryLock, Describe,
// Semaphore, RWLock and Observe of the same names in two namespaces do not
// see each other, and keys come back without the namespace.
func TestNamespace_ownServicesStayInTheirNamespace(t *testing.T) {
	etcd := proxytest.StartEtcd(t)
	root := proxytest.Client(t, etcd.URL)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	type side struct {
		ns    string
		lease int64
		locks coordproxyv1.LockServiceClient
		sems  coordproxyv1.SemaphoreServiceClient
		rw    coordproxyv1.RWLockServiceClient
		elec  coordproxyv1.ElectionServiceClient
	}
	var sides []side
	for _, ns := range []string{"tenant-a/", "tenant-b/"} {
		p := proxytest.StartProxy(t, []string{etcd.URL}, proxy.Config{Namespace: ns})
		conn := proxytest.Dial(t, p.Addr().String())
		lease, err := proxytest.Client(t, p.Addr().String()).Grant(ctx, 60)
		if err != nil {
			t.Fatal(err)
		}
		sides = append(sides, side{ns, int64(lease.ID), coordproxyv1.NewLockServiceClient(conn), coordproxyv1.NewSemaphoreServiceClient(conn),
			coordproxyv1.NewRWLockServiceClient(conn), coordproxyv1.NewElectionServiceClient(conn)})
	}
	for _, s := range sides {
		// Each namespace's TryLock of the same name finds it free.
		h, err := s.locks.TryLock(ctx, &coordproxyv1.LockRequest{Name: []byte("job"), Lease: s.lease})
		if err != nil {
			t.Fatalf("%s TryLock: %v", s.ns, err)
		}
		if want := fmt.Sprintf("job/%x", s.lease); string(h.Key) != want {
			t.Fatalf("%s key %q, want %q without the namespace", s.ns, h.Key, want)
		}
		d, err := s.locks.Describe(ctx, &coordproxyv1.DescribeRequest{Name: []byte("job")})
		if err != nil || string(d.Holder.GetKey()) != string(h.Key) || d.Waiting != 0 {
			t.Fatalf("%s Describe: %v, %v", s.ns, d, err)
		}
		if _, err := s.sems.Acquire(ctx, &coordproxyv1.AcquireRequest{Name: []byte("pool"), Lease: s.lease, Limit: 1}); err != nil {
			t.Fatalf("%s Acquire: %v", s.ns, err)
		}
		rw, err := s.rw.WLock(ctx, &coordproxyv1.RWLockRequest{Name: []byte("doc"), Lease: s.lease})
		if err != nil || !strings.HasPrefix(string(rw.Key), "doc/write/") {
			t.Fatalf("%s WLock: %v, %v", s.ns, rw, err)
		}
		ob, err := s.elec.Observe(ctx, &coordproxyv1.ObserveRequest{Name: []byte("job")})
		if err != nil {
			t.Fatal(err)
		}
		ev, err := ob.Recv()
		if err != nil || string(ev.Leader.GetKey()) != string(h.Key) {
			t.Fatalf("%s Observe: %v, %v", s.ns, ev, err)
		}
	}
	// The other namespace's holder is not visible: a second TryLock in a is
	// refused by a's own holder only.
	_, err := sides[0].locks.TryLock(ctx, &coordproxyv1.LockRequest{Name: []byte("job"), Lease: sides[1].lease})
	if st, _ := status.FromError(err); st.Code() != codes.FailedPrecondition {
		t.Fatalf("TryLock of a held name: %v", err)
	}
	for _, s := range sides {
		got, err := root.Get(ctx, s.ns, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil || got.Count != 3 {
			t.Fatalf("%s holds %d keys in etcd (%v), want 3", s.ns, got.Count, err)
		}
	}
}
