package proxy_test

import (
	"encoding/base64"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
)

// grpcurl runs the grpcurl pinned as a tool in go.mod, as the README does.
func grpcurl(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), append([]string{"tool", "grpcurl"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("grpcurl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestReflection_grpcurlListsAndCallsTheServices(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	addr := env.Proxy.Addr().String()

	list := grpcurl(t, "-plaintext", addr, "list")
	for _, svc := range []string{"v3lockpb.Lock", "v3electionpb.Election", "etcdserverpb.Lease", "etcdserverpb.KV", "etcdserverpb.Watch", "etcdserverpb.Maintenance", "grpc.reflection.v1.ServerReflection"} {
		if !strings.Contains(list, svc) {
			t.Errorf("grpcurl list lacks %s:\n%s", svc, list)
		}
	}
	for _, svc := range []string{"v3electionpb.Election", "etcdserverpb.Lease", "grpc.reflection.v1.ServerReflection"} {
		if desc := grpcurl(t, "-plaintext", addr, "describe", svc); !strings.Contains(desc, "is a service") {
			t.Errorf("describe %s:\n%s", svc, desc)
		}
	}
	if desc := grpcurl(t, "-plaintext", addr, "describe", "v3lockpb.Lock"); !strings.Contains(desc, "rpc Lock ( .v3lockpb.LockRequest ) returns ( .v3lockpb.LockResponse )") {
		t.Errorf("describe v3lockpb.Lock:\n%s", desc)
	}

	// The README's session: grant a lease, lock with it, unlock.
	var grant struct{ ID string }
	if err := json.Unmarshal([]byte(grpcurl(t, "-plaintext", "-d", `{"TTL": 60}`, addr, "etcdserverpb.Lease/LeaseGrant")), &grant); err != nil || grant.ID == "" {
		t.Fatalf("LeaseGrant answer: %v %+v", err, grant)
	}
	name := base64.StdEncoding.EncodeToString([]byte("my-lock"))
	var lock struct{ Key string }
	out := grpcurl(t, "-plaintext", "-d", `{"name": "`+name+`", "lease": "`+grant.ID+`"}`, addr, "v3lockpb.Lock/Lock")
	if err := json.Unmarshal([]byte(out), &lock); err != nil || lock.Key == "" {
		t.Fatalf("Lock answer: %v\n%s", err, out)
	}
	key, _ := base64.StdEncoding.DecodeString(lock.Key)
	if !strings.HasPrefix(string(key), "my-lock/") {
		t.Fatalf("lock key %q", key)
	}
	grpcurl(t, "-plaintext", "-d", `{"key": "`+lock.Key+`"}`, addr, "v3lockpb.Lock/Unlock")
	if kvs := env.Keys(t, "my-lock/"); len(kvs) != 0 {
		t.Fatalf("keys after unlock: %v", kvs)
	}
}
