package proxy_test

import (
	"strings"
	"testing"

	"github.com/coordproxy/coordproxy/authz"
	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Every method the proxy serves is either decided by the policy from what
// it names (package authz's scopes) or not served at all (Unimplemented,
// as etcd's grpc-proxy answers it): a method added to a service without a
// scope would be refused under every policy without anyone noticing.
func TestScopes_everyServedMethodIsScopedOrNotServed(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	conn := proxytest.Dial(t, env.Proxy.Addr().String())
	ctx := proxytest.Ctx(t)
	scoped := 0
	for _, m := range proxy.ServedMethods(env.Proxy) {
		if strings.HasPrefix(m, "/grpc.") { // health, reflection: never decided
			continue
		}
		if authz.Scoped(m) {
			scoped++
			continue
		}
		// An empty message is a valid request of any type.
		err := conn.Invoke(ctx, m, &emptypb.Empty{}, &emptypb.Empty{})
		if status.Code(err) != codes.Unimplemented {
			t.Errorf("%s is served (%v) but has no scope: no policy can allow it", m, err)
		}
	}
	if scoped < 30 {
		t.Fatalf("%d scoped methods; the proxy serves more", scoped)
	}
}
