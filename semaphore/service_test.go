package semaphore_test

import (
	"strconv"
	"strings"
	"testing"

	"github.com/coordproxy/coordproxy/keyspace"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestSemaphoreService_invalidRequestsWriteNothing(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	lease := env.Grant(t, 60)
	for _, tc := range []struct {
		desc  string
		req   *coordproxyv1.AcquireRequest
		field string
	}{
		{"no name", &coordproxyv1.AcquireRequest{Lease: lease, Limit: 1}, `"name"`},
		{"lease 0", &coordproxyv1.AcquireRequest{Name: []byte("v"), Limit: 1}, `"lease"`},
		{"limit 0", &coordproxyv1.AcquireRequest{Name: []byte("v"), Lease: lease}, `"limit"`},
		{"negative limit", &coordproxyv1.AcquireRequest{Name: []byte("v"), Lease: lease, Limit: -1}, `"limit"`},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			_, err := env.Semaphores.Acquire(ctx, tc.req)
			if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), tc.field) {
				t.Fatalf("got %v, want InvalidArgument naming %s", err, tc.field)
			}
		})
	}
	if kvs := env.Keys(t, ""); len(kvs) != 0 {
		t.Fatalf("keys written: %v", kvs)
	}
}

// Release deletes only a semaphore key: name/hex(lease) attached to that
// lease. Anything else is InvalidArgument and stays.
func TestSemaphoreRelease_refusesKeysThatAreNotSemaphoreKeys(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	lease, other := env.Grant(t, 60), env.Grant(t, 60)
	hexOf := func(l int64) string { return strconv.FormatInt(l, 16) }
	put := func(key string, lease int64) {
		if _, err := env.KV.Put(ctx, key, "3", clientv3.WithLease(clientv3.LeaseID(lease))); err != nil {
			t.Fatal(err)
		}
	}
	put("config", 0)
	put("app/abc", 0)
	put("app/"+hexOf(lease), other) // named after one lease, attached to another
	put("app/"+strings.ToUpper(hexOf(lease)), lease)
	for _, key := range []string{"", "config", "app/abc", "app/" + hexOf(lease), "app/" + strings.ToUpper(hexOf(lease)), "app/0", "app/-1"} {
		_, err := env.Semaphores.Release(ctx, &coordproxyv1.ReleaseRequest{Key: []byte(key)})
		if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), `"key"`) {
			t.Errorf("Release(%q) = %v, want InvalidArgument naming the key field", key, err)
		}
	}
	if n := len(env.Keys(t, "")); n != 4 {
		t.Fatalf("%d keys left, want all 4", n)
	}
	// A key already gone is success, as Unlock.
	if _, err := env.Semaphores.Release(ctx, &coordproxyv1.ReleaseRequest{Key: []byte("gone/" + hexOf(lease))}); err != nil {
		t.Fatalf("Release of a key already gone: %v", err)
	}
}

func TestSemaphoreDescribe_limitHoldersWithTTLAndWaitersInOrder(t *testing.T) {
	const limit = 2
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	var held []*coordproxyv1.Held
	for range limit {
		held = append(held, mustAcquire(t, env, "desc", env.Grant(t, 30), limit))
	}
	var waiting []string
	for i := range 3 {
		lease := env.Grant(t, 30)
		c := proxytest.Go(func() error {
			h, err := semAcquire(ctx, env, "desc", lease, limit)
			if err == nil {
				_, err = env.Semaphores.Release(ctx, &coordproxyv1.ReleaseRequest{Key: h.Key})
			}
			return err
		})
		t.Cleanup(func() { c.Wait(t) })
		env.WaitKeys(t, "desc/", limit+i+1)
		waiting = append(waiting, keyspace.OwnerKey("desc", clientv3.LeaseID(lease)))
	}
	t.Cleanup(func() {
		for _, h := range held {
			mustRelease(t, env, h.Key)
		}
	})

	for _, tc := range []struct {
		desc   string
		name   string
		limit  int64
		want   int64 // the semaphore's limit
		hold   int
		listed []string
		count  int64
	}{
		{"all waiters", "desc", 0, limit, limit, waiting, 3},
		{"first two waiters", "desc", 2, limit, limit, waiting[:2], 3},
		{"unused name", "none", 0, 0, 0, nil, 0},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			d, err := env.Semaphores.Describe(ctx, &coordproxyv1.DescribeRequest{Name: []byte(tc.name), Limit: tc.limit})
			if err != nil {
				t.Fatal(err)
			}
			if d.Limit != tc.want || len(d.Holders) != tc.hold || d.Waiting != tc.count || len(d.Waiters) != len(tc.listed) || d.Header.GetRevision() == 0 {
				t.Fatalf("described %v", d)
			}
			for i, h := range d.Holders {
				if string(h.Key) != string(held[i].Key) || h.CreateRevision != held[i].FencingToken || h.Ttl <= 0 || h.Ttl > 30 || h.GrantedTtl != 30 {
					t.Fatalf("holder %d: %v, want %q with its lease's TTL", i, h, held[i].Key)
				}
			}
			for i, w := range d.Waiters {
				if string(w.Key) != tc.listed[i] || w.Ttl != 0 || string(w.Value) != strconv.Itoa(limit) {
					t.Fatalf("waiter %d: %v, want %q", i, w, tc.listed[i])
				}
			}
		})
	}

	// A lock's name is not a semaphore.
	env.MustLock(t, "alock", env.Grant(t, 30))
	_, err := env.Semaphores.Describe(ctx, &coordproxyv1.DescribeRequest{Name: []byte("alock")})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("Describe of a lock: %v, want FailedPrecondition", err)
	}
}
