package proxy_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
)

// readmeExample is the README's Go example; the lines between the markers
// must appear in README.md as they are here.
func readmeExample(endpoint string) error {
	// README-BEGIN
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}})
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx := context.Background()

	// The lease is granted and kept alive through coordproxy's Lease pass-through.
	lease, err := cli.Grant(ctx, 30)
	if err != nil {
		return err
	}
	if _, err := cli.KeepAlive(ctx, lease.ID); err != nil {
		return err
	}

	locks := v3lockpb.NewLockClient(cli.ActiveConnection())
	held, err := locks.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("my-lock"), Lease: int64(lease.ID)})
	if err != nil {
		return err
	}
	fmt.Printf("holding %s\n", held.Key)
	// ... critical section ...
	_, err = locks.Unlock(ctx, &v3lockpb.UnlockRequest{Key: held.Key})
	return err
	// README-END
}

func TestReadme_goExampleRunsAgainstTheProxy(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	if err := readmeExample(env.Proxy.Addr().String()); err != nil {
		t.Fatal(err)
	}
	if kvs := env.Keys(t, "my-lock/"); len(kvs) != 0 {
		t.Fatalf("keys left: %v", kvs)
	}

	src, err := os.ReadFile("readme_test.go")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	body := string(src)
	body = body[strings.Index(body, "// README-BEGIN\n")+len("// README-BEGIN\n") : strings.Index(body, "\t// README-END")]
	var want []string
	for _, l := range strings.Split(strings.TrimRight(body, "\n"), "\n") {
		want = append(want, strings.TrimPrefix(l, "\t"))
	}
	if !strings.Contains(string(readme), "```go\n"+strings.Join(want, "\n")+"\n```") {
		t.Fatalf("README.md's Go example differs from readmeExample; it should read:\n%s", strings.Join(want, "\n"))
	}
}
