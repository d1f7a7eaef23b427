package proxy_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// dialWith opens a gRPC connection to addr with creds, closed at cleanup.
func dialWith(t *testing.T, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// lockRound grants a lease, locks name under it and unlocks, through conn.
func lockRound(ctx context.Context, conn *grpc.ClientConn, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	g, err := pb.NewLeaseClient(conn).LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 600})
	if err != nil {
		return err
	}
	lc := v3lockpb.NewLockClient(conn)
	l, err := lc.Lock(ctx, &v3lockpb.LockRequest{Name: []byte(name), Lease: g.ID})
	if err != nil {
		return err
	}
	_, err = lc.Unlock(ctx, &v3lockpb.UnlockRequest{Key: l.Key})
	return err
}

// httpsClient offers both h2 and http/1.1, as curl and browsers do.
func httpsClient(cfg *tls.Config) *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}}
}

func httpsDo(c *http.Client, method, url, body string) (int, string, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// gatewayLockRound is lockRound through the JSON gateway.
func gatewayLockRound(t *testing.T, c *http.Client, base, name string) {
	t.Helper()
	call := func(path, body string, out any) {
		t.Helper()
		code, resp, err := httpsDo(c, http.MethodPost, base+path, body)
		if err != nil || code != http.StatusOK {
			t.Fatalf("POST %s: %d %q %v", path, code, resp, err)
		}
		if err := json.Unmarshal([]byte(resp), out); err != nil {
			t.Fatalf("POST %s: %q: %v", path, resp, err)
		}
	}
	var grant struct{ ID string }
	call("/v3/lease/grant", `{"TTL": "60"}`, &grant)
	var lock struct{ Key string }
	call("/v3/lock/lock", `{"name": "`+b64(name)+`", "lease": "`+grant.ID+`"}`, &lock)
	if lock.Key == "" {
		t.Fatal("lock through the gateway returned no key")
	}
	call("/v3/lock/unlock", `{"key": "`+lock.Key+`"}`, &struct{}{})
}

func TestTLS_portServesGRPCGatewayAndReadyzOverTLSOnly(t *testing.T) {
	pki := proxytest.NewPKI(t)
	env := proxytest.New(t, proxy.Config{CertFile: pki.ServerCert, KeyFile: pki.ServerKey})
	addr := env.Proxy.Addr().String()
	ctx := proxytest.Ctx(t)

	if err := lockRound(ctx, dialWith(t, addr, credentials.NewTLS(pki.ClientTLS(false))), "tls-grpc"); err != nil {
		t.Fatalf("Lock over TLS: %v", err)
	}
	err := lockRound(ctx, dialWith(t, addr, insecure.NewCredentials()), "tls-plaintext")
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("Lock over plaintext to a TLS port: %v, want Unavailable", err)
	}

	c := httpsClient(pki.ClientTLS(false))
	base := "https://" + addr
	gatewayLockRound(t, c, base, "tls-gateway")
	code, body, err := httpsDo(c, http.MethodGet, base+"/readyz", "")
	if err != nil || code != http.StatusOK {
		t.Fatalf("/readyz over HTTPS: %d %q %v", code, body, err)
	}
	if kvs := env.Keys(t, "tls-"); len(kvs) != 0 {
		t.Fatalf("keys left: %v", kvs)
	}
}

func TestTLS_clientCertificateAuthRefusesClientsWithoutOne(t *testing.T) {
	pki := proxytest.NewPKI(t)
	env := proxytest.New(t, proxy.Config{
		CertFile: pki.ServerCert, KeyFile: pki.ServerKey,
		TrustedCAFile: pki.CAFile, ClientCertAuth: true,
	})
	addr := env.Proxy.Addr().String()
	base := "https://" + addr
	ctx := proxytest.Ctx(t)

	err := lockRound(ctx, dialWith(t, addr, credentials.NewTLS(pki.ClientTLS(false))), "mtls-nocert")
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("Lock without a client certificate: %v, want Unavailable", err)
	}
	if code, body, err := httpsDo(httpsClient(pki.ClientTLS(false)), http.MethodGet, base+"/healthz", ""); err == nil {
		t.Fatalf("/healthz without a client certificate: %d %q, want the handshake refused", code, body)
	}

	if err := lockRound(ctx, dialWith(t, addr, credentials.NewTLS(pki.ClientTLS(true))), "mtls-grpc"); err != nil {
		t.Fatalf("Lock with a client certificate: %v", err)
	}
	c := httpsClient(pki.ClientTLS(true))
	gatewayLockRound(t, c, base, "mtls-gateway")
	if code, body, err := httpsDo(c, http.MethodGet, base+"/readyz", ""); err != nil || code != http.StatusOK {
		t.Fatalf("/readyz with a client certificate: %d %q %v", code, body, err)
	}
	// etcd's Go client with the same tls.Config, as the README says.
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{addr}, TLS: pki.ClientTLS(true), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if err := lockRound(ctx, cli.ActiveConnection(), "mtls-clientv3"); err != nil {
		t.Fatalf("Lock through clientv3 with a client certificate: %v", err)
	}
	// The README's grpcurl line.
	if list := grpcurl(t, "-cacert", pki.CAFile, "-cert", pki.ClientCert, "-key", pki.ClientKey, addr, "list"); !strings.Contains(list, "v3lockpb.Lock") {
		t.Fatalf("grpcurl over mTLS:\n%s", list)
	}
	if kvs := env.Keys(t, "mtls-"); len(kvs) != 0 {
		t.Fatalf("keys left: %v", kvs)
	}
}

func TestTLS_etcdWithClientCertificates(t *testing.T) {
	pki := proxytest.NewPKI(t)
	etcd, err := proxy.StartEmbeddedEtcd(t.TempDir(), proxy.EmbedOptions{
		UnsafeNoFsync: true,
		ClientTLS: &transport.TLSInfo{
			CertFile: pki.ServerCert, KeyFile: pki.ServerKey,
			TrustedCAFile: pki.CAFile, ClientCertAuth: true,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	if !strings.HasPrefix(etcd.URL, "https://") {
		t.Fatalf("etcd URL %s, want https", etcd.URL)
	}
	ctx := proxytest.Ctx(t)

	srv := proxytest.StartProxy(t, []string{etcd.URL}, proxy.Config{
		EtcdCACert: pki.CAFile, EtcdCert: pki.ClientCert, EtcdKey: pki.ClientKey,
	})
	if err := lockRound(ctx, proxytest.Dial(t, srv.Addr().String()), "etcdtls"); err != nil {
		t.Fatalf("Lock through a proxy with etcd certificates: %v", err)
	}
	kv, err := clientv3.New(clientv3.Config{Endpoints: []string{etcd.URL}, TLS: pki.ClientTLS(true), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer kv.Close()
	if resp, err := kv.Get(ctx, "etcdtls", clientv3.WithPrefix()); err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("keys left: %v %v", resp, err)
	}

	readyz := func(srv *proxy.Server) int {
		code, body, err := httpsDo(http.DefaultClient, http.MethodGet, "http://"+srv.Addr().String()+"/readyz", "")
		if err != nil {
			t.Fatalf("/readyz: %v", err)
		}
		t.Logf("/readyz: %d %s", code, body)
		return code
	}
	if code := readyz(srv); code != http.StatusOK {
		t.Fatalf("/readyz of a proxy with etcd's CA: %d, want 200", code)
	}

	// Without the CA, etcd's certificate is checked against the system's
	// roots and refused: the proxy starts (etcd's client connects lazily)
	// but is not ready.
	srv = proxytest.StartProxy(t, []string{etcd.URL}, proxy.Config{EtcdCert: pki.ClientCert, EtcdKey: pki.ClientKey})
	if code := readyz(srv); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz of a proxy that cannot verify etcd: %d, want 503", code)
	}
}

func TestAuth_proxyWorksAsItsOwnEtcdUser(t *testing.T) {
	etcd := proxytest.StartEtcd(t)
	root := proxytest.EnableAuth(t, etcd.URL, "coordproxy", "proxy-secret", "auth-")
	ctx := proxytest.Ctx(t)

	srv := proxytest.StartProxy(t, []string{etcd.URL}, proxy.Config{EtcdUsername: "coordproxy", EtcdPassword: "proxy-secret"})
	conn := proxytest.Dial(t, srv.Addr().String())
	if err := lockRound(ctx, conn, "auth-lock"); err != nil {
		t.Fatalf("Lock as the proxy's user: %v", err)
	}
	if code, body, err := httpsDo(http.DefaultClient, http.MethodGet, "http://"+srv.Addr().String()+"/readyz", ""); err != nil || code != http.StatusOK {
		t.Fatalf("/readyz: %d %q %v", code, body, err)
	}

	// A waiter whose client goes away is removed by the proxy, with its
	// own credentials, on its own context.
	leases := pb.NewLeaseClient(conn)
	lc := v3lockpb.NewLockClient(conn)
	grant := func() int64 { return proxytest.Grant(t, leases, 600) }
	held, err := lc.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("auth-queue"), Lease: grant()})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	waitErr := make(chan error, 1)
	go func() {
		_, err := lc.Lock(wctx, &v3lockpb.LockRequest{Name: []byte("auth-queue"), Lease: grant()})
		waitErr <- err
	}()
	keys := func(n int) {
		t.Helper()
		proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
			resp, err := root.Get(ctx, "auth-queue/", clientv3.WithPrefix(), clientv3.WithCountOnly())
			if err != nil {
				return false, err.Error()
			}
			return int(resp.Count) == n, fmt.Sprintf("%d keys under auth-queue/, want %d", resp.Count, n)
		})
	}
	keys(2)
	cancel()
	if err := <-waitErr; status.Code(err) != codes.Canceled {
		t.Fatalf("cancelled waiter: %v", err)
	}
	keys(1)
	if resp, err := root.Get(ctx, string(held.Key)); err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("the holder's key: %v %v", resp, err)
	}
	if _, err := lc.Unlock(ctx, &v3lockpb.UnlockRequest{Key: held.Key}); err != nil {
		t.Fatal(err)
	}
	keys(0)

	bad := proxy.New(proxy.Config{
		Endpoints: []string{etcd.URL}, Listen: "127.0.0.1:0", Logger: proxytest.Logger(),
		EtcdUsername: "coordproxy", EtcdPassword: "wrong",
	})
	err = bad.Start(ctx)
	if err == nil {
		bad.Shutdown(ctx)
		t.Fatal("a proxy with a wrong password started")
	}
	if !strings.Contains(err.Error(), "authentication failed") {
		t.Fatalf("start with a wrong password: %v, want etcd's authentication error", err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("start with a wrong password timed out instead of failing: %v", err)
	}
}
