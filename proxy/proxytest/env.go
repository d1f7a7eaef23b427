package proxytest

import (
	"context"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"github.com/coordproxy/coordproxy/proxy"
	"github.com/prometheus/client_golang/prometheus"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	etcdproxy "go.etcd.io/etcd/pkg/v3/proxy"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// Env is a real etcd with a coordproxy in front of it, and clients for both.
type Env struct {
	Etcd  *proxy.EmbeddedEtcd
	Proxy *proxy.Server
	// KV talks straight to etcd: for setup and for inspecting the keyspace.
	KV *clientv3.Client
	// Conn and the service clients talk to the proxy.
	Conn     *grpc.ClientConn
	Lock     v3lockpb.LockClient
	Election v3electionpb.ElectionClient
	Lease    pb.LeaseClient
	// Clients of coordproxy's own API (proto/coordproxy/v1).
	Locks      coordproxyv1.LockServiceClient
	Semaphores coordproxyv1.SemaphoreServiceClient
	RWLocks    coordproxyv1.RWLockServiceClient
	Elections  coordproxyv1.ElectionServiceClient
	Sessions   coordproxyv1.SessionServiceClient
}

// New starts etcd and a proxy in front of it.
func New(t testing.TB, cfg proxy.Config) *Env {
	t.Helper()
	etcd := StartEtcd(t)
	return NewProxyEnv(t, etcd, etcd.URL, cfg)
}

// NewProxyEnv starts a proxy in front of an etcd the test already runs,
// reaching it at etcdURL (etcd.URL, or a fault proxy in front of it).
func NewProxyEnv(t testing.TB, etcd *proxy.EmbeddedEtcd, etcdURL string, cfg proxy.Config) *Env {
	t.Helper()
	srv := StartProxy(t, []string{etcdURL}, cfg)
	conn := Dial(t, srv.Addr().String())
	return &Env{
		Etcd:     etcd,
		Proxy:    srv,
		KV:       Client(t, etcd.URL),
		Conn:     conn,
		Lock:     v3lockpb.NewLockClient(conn),
		Election: v3electionpb.NewElectionClient(conn),
		Lease:    pb.NewLeaseClient(conn),

		Locks:      coordproxyv1.NewLockServiceClient(conn),
		Semaphores: coordproxyv1.NewSemaphoreServiceClient(conn),
		RWLocks:    coordproxyv1.NewRWLockServiceClient(conn),
		Elections:  coordproxyv1.NewElectionServiceClient(conn),
		Sessions:   coordproxyv1.NewSessionServiceClient(conn),
	}
}

// Ctx is a context bounded so that a hung call fails the test instead of
// hanging it.
func Ctx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// Grant grants a lease of ttl seconds through the proxy.
func (e *Env) Grant(t testing.TB, ttl int64) int64 {
	t.Helper()
	return Grant(t, e.Lease, ttl)
}

// Grant grants a lease of ttl seconds through lc.
func Grant(t testing.TB, lc pb.LeaseClient, ttl int64) int64 {
	t.Helper()
	resp, err := lc.LeaseGrant(Ctx(t), &pb.LeaseGrantRequest{TTL: ttl})
	if err != nil {
		t.Fatalf("grant: %v", err)
	}
	return resp.ID
}

// Keys lists every key under prefix, straight from etcd.
func (e *Env) Keys(t testing.TB, prefix string) []*mvccpb.KeyValue {
	t.Helper()
	resp, err := e.KV.Get(Ctx(t), prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("get %q: %v", prefix, err)
	}
	return resp.Kvs
}

// WaitKeys waits until prefix holds exactly n keys: the fence that orders
// steps of a test without sleeping for a guessed time.
func (e *Env) WaitKeys(t testing.TB, prefix string, n int) {
	t.Helper()
	WaitFor(t, 30*time.Second, func() (bool, string) {
		kvs := e.Keys(t, prefix)
		return len(kvs) == n, strconv.Itoa(len(kvs)) + " keys under " + strconv.Quote(prefix) + ", want " + strconv.Itoa(n)
	})
}

// WaitFor polls cond until it holds or bound passes, then fails with cond's
// last description.
func WaitFor(t testing.TB, bound time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		ok, what := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", bound, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// FreeAddr returns a loopback address with a port that was free a moment
// ago, for a process to bind later. The port is below the kernel's
// ephemeral range, where neither outgoing connections nor listeners on
// port 0 take ports, so that between now and the bind only another
// FreeAddr caller could take it (tests with many processes connecting make
// a port from the ephemeral range likely to be taken meanwhile).
//
// A port it handed out is never handed out again by this process: a test
// that stops a process and restarts it on the same port (an etcd member
// killed and restarted) must find it still free although tests running in
// parallel ask for ports meanwhile.
func FreeAddr(t testing.TB) string {
	t.Helper()
	lo, hi := 10000, ephemeralStart()
	for range 200 {
		if hi-lo < 1000 {
			break
		}
		port := lo + rand.IntN(hi-lo)
		handedOut.Lock()
		taken := handedOut.ports[port]
		handedOut.Unlock()
		if taken {
			continue
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if l, err := net.Listen("tcp", addr); err == nil {
			l.Close()
			handedOut.Lock()
			taken = handedOut.ports[port]
			handedOut.ports[port] = true
			handedOut.Unlock()
			if !taken {
				return addr
			}
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// handedOut is the ports FreeAddr handed out.
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// ephemeralStart is the first port of the kernel's ephemeral range
// (Linux's ip_local_port_range; 32768 where it cannot be read).
func ephemeralStart() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 32768
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return 32768
	}
	return n
}

// Metric is the sum of the series of the metric called name whose labels
// include all of labels, as the proxy's registry reports them; 0 if none.
func (e *Env) Metric(t testing.TB, name string, labels map[string]string) float64 {
	t.Helper()
	return Gathered(t, e.Proxy.Registry(), name, labels)
}

// EtcdMetric is the value of one of the embedded etcd's metrics, such as
// etcd_debugging_mvcc_watcher_total. etcd registers them in the default
// registry, so this sums over every etcd the test process runs.
func EtcdMetric(t testing.TB, name string) float64 {
	t.Helper()
	return Gathered(t, prometheus.DefaultGatherer, name, nil)
}

// Gathered is the sum of the series of metric name in g whose labels
// include all of labels (a counter's or a gauge's value); 0 if there are none.
func Gathered(t testing.TB, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue metrics
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// FaultProxy puts etcd's own fault-injecting TCP proxy
// (go.etcd.io/etcd/pkg/v3/proxy) in front of the etcd at toURL and returns it
// with its client URL; it is closed at cleanup. PauseTx and PauseRx model a
// partition: bytes are held, not lost, as TCP would retransmit them.
// (Blackholing drops bytes inside a live HTTP/2 connection, which corrupts it
// in a way no real network does.)
func FaultProxy(t testing.TB, toURL string) (etcdproxy.Server, string) {
	t.Helper()
	from := FreeAddr(t)
	to, err := url.Parse(toURL)
	if err != nil {
		t.Fatal(err)
	}
	to.Scheme = "tcp"
	p := etcdproxy.NewServer(etcdproxy.ServerConfig{Logger: zap.NewNop(), From: url.URL{Scheme: "tcp", Host: from}, To: *to})
	select {
	case <-p.Ready():
	case err := <-p.Error():
		t.Fatalf("fault proxy: %v", err)
	}
	// The proxy reports copy errors on a small buffered channel and blocks
	// when it is full: drain it.
	go func() {
		for {
			select {
			case <-p.Error():
			case <-p.Done():
				return
			}
		}
	}()
	// Its Close waits for its connections to end: registered before the
	// clients that use it, it runs after they are closed.
	t.Cleanup(func() { p.Close() })
	return p, "http://" + from
}

// WaitCutOff waits until a request through cli goes unanswered. A paused
// FaultProxy still forwards what it had read when it was paused, so a test
// that needs the next request to fail waits for this first.
func WaitCutOff(t testing.TB, cli *clientv3.Client) {
	t.Helper()
	WaitFor(t, 30*time.Second, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		_, err := cli.Get(ctx, "coordproxy-cut-off-probe")
		return err != nil, "etcd still answers through the paused fault proxy"
	})
}

// MustLock locks name for lease through the proxy's Lock service.
func (e *Env) MustLock(t testing.TB, name string, lease int64) *v3lockpb.LockResponse {
	t.Helper()
	resp, err := e.Lock.Lock(Ctx(t), &v3lockpb.LockRequest{Name: []byte(name), Lease: lease})
	if err != nil {
		t.Fatalf("lock %q: %v", name, err)
	}
	return resp
}

// MustUnlock unlocks key through the proxy's Lock service.
func (e *Env) MustUnlock(t testing.TB, key []byte) {
	t.Helper()
	if _, err := e.Lock.Unlock(Ctx(t), &v3lockpb.UnlockRequest{Key: key}); err != nil {
		t.Fatalf("unlock %q: %v", key, err)
	}
}
