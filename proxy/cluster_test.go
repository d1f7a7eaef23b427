package proxy_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// MemberList through any registering replica lists every registering
// replica's advertised URL, so that a client that syncs its endpoints stays
// on the proxies; a replica that stops leaves the list at once; membership
// changes are not served.
func TestCluster_memberListListsTheReplicas(t *testing.T) {
	etcd := proxytest.StartEtcd(t)
	a := proxytest.StartProxy(t, []string{etcd.URL}, proxy.Config{RegisterMembers: true})
	b := proxytest.StartProxy(t, []string{etcd.URL}, proxy.Config{RegisterMembers: true, AdvertiseClientURLs: []string{"http://replica-b.example:2379"}})
	// One that does not register lists itself alone, and is not listed.
	c := proxytest.StartProxy(t, []string{etcd.URL}, proxy.Config{})
	urlA := "http://" + a.Addr().String()
	ctx := proxytest.Ctx(t)

	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{a.Addr().String()}, AutoSyncInterval: 100 * time.Millisecond, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	urls := func() []string {
		resp, err := cli.MemberList(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, m := range resp.Members {
			out = append(out, m.ClientURLs...)
		}
		slices.Sort(out)
		return out
	}
	proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
		got := urls()
		return slices.Equal(got, []string{urlA, "http://replica-b.example:2379"}), fmt.Sprintf("members %v", got)
	})
	// Auto-sync took the replicas' URLs as the client's endpoints.
	proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
		eps := cli.Endpoints()
		slices.Sort(eps)
		return slices.Equal(eps, []string{urlA, "http://replica-b.example:2379"}), fmt.Sprintf("endpoints %v", eps)
	})

	alone, err := pb.NewClusterClient(proxytest.Dial(t, c.Addr().String())).MemberList(ctx, &pb.MemberListRequest{})
	if err != nil || len(alone.Members) != 1 || !slices.Equal(alone.Members[0].ClientURLs, []string{"http://" + c.Addr().String()}) {
		t.Fatalf("MemberList through a replica that does not register: %v, %v", alone, err)
	}

	cl := pb.NewClusterClient(proxytest.Dial(t, a.Addr().String()))
	if _, err := cl.MemberAdd(ctx, &pb.MemberAddRequest{PeerURLs: []string{"http://x:2380"}}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("MemberAdd: %v, want Unimplemented", err)
	}
	if _, err := cl.MemberRemove(ctx, &pb.MemberRemoveRequest{ID: 1}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("MemberRemove: %v, want Unimplemented", err)
	}

	b.Shutdown(ctx)
	resp, err := cl.MemberList(ctx, &pb.MemberListRequest{Linearizable: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Members) != 1 || !slices.Equal(resp.Members[0].ClientURLs, []string{urlA}) || resp.Members[0].ID == 0 || resp.Header.Revision == 0 {
		t.Fatalf("after b stopped: %v, want a alone", resp)
	}
}
