package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/coordproxy/coordproxy/authz"
	"github.com/coordproxy/coordproxy/electionproxy"
	"github.com/coordproxy/coordproxy/etcdio"
	"github.com/coordproxy/coordproxy/grant"
	"github.com/coordproxy/coordproxy/lease0"
	"github.com/coordproxy/coordproxy/lockproxy"
	"github.com/coordproxy/coordproxy/passthrough"
	"github.com/coordproxy/coordproxy/policy"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"github.com/coordproxy/coordproxy/quota"
	"github.com/coordproxy/coordproxy/rwlock"
	"github.com/coordproxy/coordproxy/semaphore"
	"github.com/coordproxy/coordproxy/session"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/soheilhy/cmux"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/test/bufconn"
)

// Etcd's limits, so that requests the proxy forwards are judged as etcd
// judges them: a message of Config.MaxRequestBytes plus gRPC overhead, and
// keepalive pings no more often than every 5 s.
const (
	grpcOverheadBytes = 512 * 1024 // etcd's, over its --max-request-bytes
	// MaxRequestBytesLimit is the largest Config.MaxRequestBytes: with the
	// overhead, gRPC's largest message.
	MaxRequestBytesLimit = math.MaxInt32 - grpcOverheadBytes
	maxHeaderBytes       = 64 << 10 // an HTTP/1.1 request's header
	keepaliveMinTime     = 5 * time.Second
	inprocBufferBytes    = 1 << 20
)

// Server is one coordproxy: a gRPC listener in front of an etcd cluster. It
// holds what it starts and stops, in the order Start starts it: the
// listener, the policy's reload, etcd (embedded in dev mode), the services
// over it, the gRPC and HTTP servers; what each does lives in its package.
type Server struct {
	cfg Config
	log *slog.Logger

	serverTLS  *tls.Config
	lis        net.Listener
	stopPolicy context.CancelFunc // ends the policy file's reload
	etcd       *EmbeddedEtcd      // dev mode only
	endpoints  []string           // the etcd the proxy talks to
	access     *etcdio.Etcd
	granter    *grant.Granter
	authz      *authz.Authorizer
	quotas     *quota.Quotas
	grpc       *grpc.Server
	health     *health.Server
	http       *http.Server
	mux        cmux.CMux
	inproc     *bufconn.Listener // the gateway's way into the gRPC server
	gwConn     *grpc.ClientConn
	serveErr   chan error
	unstarted  prometheus.Counter        // connections closed before their protocol started
	lastReady  atomic.Pointer[readiness] // http.go
	drain      drain                     // shutdown.go
	member     member                    // this replica in MemberList
}

// member is this replica as MemberList lists it, and its registration.
type member struct {
	self       passthrough.Member
	unregister context.CancelFunc // ends the registration
	registered <-chan struct{}    // closed when it has ended
}

// servedServices are the services registered on srv, by their gRPC names,
// sorted, without gRPC's own (health, reflection): what the proxy serves.
// grpc.health.v1 reports each of them and "" for the whole server; the
// README lists them (readme_test.go).
func servedServices(srv *grpc.Server) []string {
	var names []string
	for name := range srv.GetServiceInfo() {
		if !strings.HasPrefix(name, "grpc.") {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// New returns a Server for cfg, its zero fields taken from DefaultConfig;
// Start or Run starts it.
func New(cfg Config) *Server {
	cfg = cfg.withDefaults()
	return &Server{cfg: cfg, log: cfg.Logger, serveErr: make(chan error, 1), drain: newDrain()}
}

// Run starts the server, serves until ctx is done, then stops gracefully
// within the shutdown timeout.
func (s *Server) Run(ctx context.Context) error {
	if err := s.Start(ctx); err != nil {
		return err
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-s.serveErr:
	}
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	s.Shutdown(sctx)
	return err
}

// Start listens, connects to etcd (starting the embedded one in dev mode) and
// serves in the background. What it started before a failure is stopped.
func (s *Server) Start(ctx context.Context) (err error) {
	// Listen first: a bad certificate or a taken port fails at once, before
	// etcd is touched.
	if err := s.listen(); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			if s.stopPolicy != nil {
				s.stopPolicy() // its reload goroutine, started below
			}
			s.closeEtcdSide(context.Background())
			s.lis.Close()
		}
	}()
	var rules *policy.Store // nil: no policy, everything allowed
	if s.cfg.PolicyFile != "" {
		if rules, err = policy.Load(s.cfg.PolicyFile, s.log); err != nil {
			return err
		}
		var pctx context.Context
		pctx, s.stopPolicy = context.WithCancel(context.Background())
		go rules.Watch(pctx)
	}
	if err := s.connectEtcd(ctx); err != nil {
		return err
	}
	s.authz = authz.New(rules, s.access, s.cfg.Registry, s.log)
	s.quotas = s.newQuotas(rules)
	if err := s.newGRPC(); err != nil {
		return err
	}
	if err := s.newHTTP(ctx); err != nil {
		return err
	}
	s.serve()
	return nil
}

// listen builds the port's TLS and binds the listen address.
func (s *Server) listen() (err error) {
	if s.serverTLS, err = s.cfg.ServerTLS(); err != nil {
		return err
	}
	s.lis, err = net.Listen("tcp", s.cfg.Listen)
	return err
}

// connectEtcd starts the embedded etcd in dev mode, dials etcd and sets up
// what every primitive shares over it.
func (s *Server) connectEtcd(ctx context.Context) (err error) {
	etcdTLS, err := s.cfg.EtcdTLS()
	if err != nil {
		return err
	}
	s.endpoints = s.cfg.Endpoints
	if len(s.endpoints) == 0 {
		opts := s.cfg.Embed
		if opts.MaxRequestBytes == 0 {
			opts.MaxRequestBytes = s.cfg.MaxRequestBytes // one limit, etcd's and the proxy's
		}
		if s.etcd, err = StartEmbeddedEtcd(s.cfg.DataDir, opts); err != nil {
			return err
		}
		s.endpoints = []string{s.etcd.URL}
		s.log.Info("dev mode: started embedded etcd", "url", s.etcd.URL, "data_dir", s.etcd.Dir)
	}
	s.access, err = etcdio.Dial(ctx, etcdio.Config{
		Endpoints:      s.endpoints,
		DialTimeout:    s.cfg.DialTimeout,
		RequestTimeout: s.cfg.RequestTimeout,
		MaxRequests:    s.cfg.MaxEtcdRequests,
		TLS:            etcdTLS,
		Username:       s.cfg.EtcdUsername,
		Password:       s.cfg.EtcdPassword,
		Namespace:      s.cfg.Namespace,
		Batching:       s.cfg.EtcdBatching,
		TracerProvider: s.cfg.TracerProvider,
		Registry:       s.cfg.Registry,
		Logger:         s.log,
	})
	if err != nil {
		return err
	}
	s.granter = grant.New(s.access, grant.Options{
		ObserveBuffer: s.cfg.ObserveBuffer,
		QueueLinger:   s.cfg.QueueLinger,
		HoldCheck:     s.cfg.HoldCheck,
		Logger:        s.log,
		Metrics:       grant.NewMetrics(s.cfg.Registry),
	})
	return nil
}

// newGRPC builds the gRPC server with every service, health and reflection.
func (s *Server) newGRPC() error {
	s.unstarted = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "coordproxy", Name: "connections_unstarted_closed_total",
		Help: "Connections closed because they had not shown their protocol (first bytes, HTTP/2 preface, TLS handshake) within --handshake-timeout, or showed none the port serves.",
	})
	s.cfg.Registry.MustRegister(s.unstarted)
	overrun := newOverrunCheck(s.log, s.cfg.RequestTimeout, s.cfg.Registry)
	rpcStats := newRPCStats(s.cfg.Registry, overrun)
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(int(s.cfg.MaxRequestBytes + grpcOverheadBytes)),
		grpc.ConnectionTimeout(s.cfg.HandshakeTimeout),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: keepaliveMinTime}),
		// A client whose host vanished or whose process is paused answers
		// no ping: its connection, and its sessions with it, end within
		// interval + timeout.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: s.cfg.KeepaliveInterval, Timeout: s.cfg.KeepaliveTimeout}),
		grpc.StatsHandler(rpcStats),
		// One interceptor each: every chained one deepens the stack a
		// waiting call parks with (see rpcStats).
		grpc.UnaryInterceptor(s.edgeUnary),
		grpc.StreamInterceptor(s.edgeStream),
		// Calls run on a few long-lived goroutines whose stacks stay grown,
		// instead of a new one per call that regrows its stack every time
		// (12 % of the proxy's CPU uncontended; docs/benchmarks.md). A call
		// that finds no idle worker, such as a parked waiter's, gets a
		// goroutine of its own as before.
		grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))),
	}
	if s.serverTLS != nil {
		// gRPC sees the client certificate of the port's TLS (tls.go).
		opts = append(opts, grpc.Creds(newPeerTLS()))
	}
	if tp := s.cfg.TracerProvider; tp != nil {
		opts = append(opts, grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(etcdio.Propagators))))
	}
	s.grpc = grpc.NewServer(opts...)
	g, e, ns := s.granter, s.access, s.cfg.Namespace
	l0 := lease0.New(e, s.cfg.Registry, s.log)
	v3lockpb.RegisterLockServer(s.grpc, lockproxy.New(g, e, l0))
	v3electionpb.RegisterElectionServer(s.grpc, electionproxy.New(g, e, l0))
	var cache *passthrough.ReadCache
	if s.cfg.ReadCacheKeys > 0 {
		cache = passthrough.NewReadCache(e, s.cfg.ReadCacheKeys, s.cfg.Registry)
	}
	pb.RegisterKVServer(s.grpc, passthrough.NewKV(e, ns, cache))
	pb.RegisterWatchServer(s.grpc, passthrough.NewWatch(e, ns, passthrough.WatchConfig{Unshared: s.cfg.UnsharedWatches, Linger: s.cfg.WatchLinger},
		passthrough.NewWatchMetrics(s.cfg.Registry)))
	pb.RegisterLeaseServer(s.grpc, passthrough.NewLease(e, ns))
	pb.RegisterMaintenanceServer(s.grpc, passthrough.NewMaintenance(e))
	pb.RegisterAuthServer(s.grpc, passthrough.NewAuth(e))
	s.member.self = s.advertised()
	pb.RegisterClusterServer(s.grpc, passthrough.NewCluster(e, s.member.self, s.cfg.RegisterMembers))
	coordproxyv1.RegisterLockServiceServer(s.grpc, lockproxy.NewLocks(g, e, l0))
	coordproxyv1.RegisterSemaphoreServiceServer(s.grpc, semaphore.New(g, e))
	coordproxyv1.RegisterRWLockServiceServer(s.grpc, rwlock.New(g, e))
	coordproxyv1.RegisterElectionServiceServer(s.grpc, electionproxy.NewElections(g, e, l0))
	coordproxyv1.RegisterSessionServiceServer(s.grpc, session.New(e, s.log, session.NewMetrics(s.cfg.Registry), session.Config{LockDelay: s.cfg.SessionLockDelay}))
	s.health = health.NewServer()
	for _, svc := range append([]string{""}, servedServices(s.grpc)...) {
		s.health.SetServingStatus(svc, healthpb.HealthCheckResponse_SERVING)
	}
	healthpb.RegisterHealthServer(s.grpc, s.health)
	if err := registerReflection(s.grpc); err != nil {
		return err
	}
	rpcStats.initialize(s.grpc)
	return nil
}

// newHTTP builds the HTTP side of the port: the JSON gateway, which calls
// the same gRPC server in memory (without going through the port and
// whatever it asks of clients), health, metrics and profiles.
func (s *Server) newHTTP(ctx context.Context) (err error) {
	s.inproc = bufconn.Listen(inprocBufferBytes)
	if s.gwConn, err = dialInProcess(s.inproc); err != nil {
		return err
	}
	gw, err := newGateway(context.WithoutCancel(ctx), s.gwConn, s.log)
	if err != nil {
		return err
	}
	// The gateway's calls carry their HTTP client's identity.
	s.http = &http.Server{Handler: s.httpMux(s.authz.Gateway(gw)),
		// A request's header must arrive within the handshake bound and
		// be at most 64 KiB; its body within 30 s.
		ReadHeaderTimeout: s.cfg.HandshakeTimeout, MaxHeaderBytes: maxHeaderBytes, ReadTimeout: 30 * time.Second,
		ConnContext: authz.ConnContext}
	s.cfg.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "coordproxy", Name: "ready",
		Help: "1 when /readyz would answer 200 (etcd answers a read that needs a leader, within 2 s, and the proxy is not draining), else 0: the last /readyz answer if it is less than 5 s old, else asked of etcd at the scrape.",
	}, s.readyGauge))
	return nil
}

// serve shares the listen address between gRPC (HTTP/2) and HTTP/1 (the
// JSON gateway, health, metrics), as on an etcd member; with TLS, cmux tells
// them apart on the decrypted stream.
func (s *Server) serve() {
	muxLis := s.lis
	if s.serverTLS != nil {
		muxLis = tls.NewListener(s.lis, s.serverTLS)
	}
	s.mux = cmux.New(muxLis)
	// A connection that has not shown its protocol (its first bytes, a
	// whole HTTP/2 preface, the TLS handshake) within the bound is closed,
	// so that connections that never start cannot pile up; gRPC's own
	// handshake after the preface has the same bound (ConnectionTimeout).
	s.mux.SetReadTimeout(s.cfg.HandshakeTimeout)
	s.mux.HandleError(func(err error) bool {
		var nm cmux.ErrNotMatched
		if errors.As(err, &nm) {
			s.unstarted.Inc()
		}
		return true // keep serving
	})
	grpcL := s.mux.Match(cmux.HTTP2())
	httpL := s.mux.Match(cmux.HTTP1Fast())
	serve := func(name string, f func() error) {
		go func() {
			if err := f(); err != nil && !s.drain.draining.Load() && !errors.Is(err, grpc.ErrServerStopped) && !errors.Is(err, http.ErrServerClosed) {
				select {
				case s.serveErr <- fmt.Errorf("%s: %w", name, err):
				default:
				}
			}
		}()
	}
	serve("grpc", func() error { return s.grpc.Serve(grpcL) })
	serve("grpc in-process", func() error { return s.grpc.Serve(s.inproc) })
	serve("http", func() error { return s.http.Serve(httpL) })
	serve("listener", s.mux.Serve)
	if s.cfg.RegisterMembers {
		var rctx context.Context
		rctx, s.member.unregister = context.WithCancel(context.Background())
		s.member.registered = passthrough.Register(rctx, s.access, s.member.self, s.log)
	}
	s.log.Info("serving etcd Lock, Election, KV, Watch, Lease, Maintenance.Status, Auth.Authenticate and Cluster.MemberList and coordproxy.v1's services over gRPC and JSON, /healthz, /readyz, /metrics",
		"listen", s.lis.Addr().String(), "advertise_client_urls", strings.Join(s.member.self.ClientURLs, ","),
		"tls", tlsMode(s.serverTLS), "etcd", s.endpoints, "services", strings.Join(servedServices(s.grpc), ","))
}

// advertised is this replica as MemberList lists it: the advertised client
// URLs, by default the listen address (with this host's name for an
// unspecified host), named by the first one's host.
func (s *Server) advertised() passthrough.Member {
	urls := s.cfg.AdvertiseClientURLs
	if len(urls) == 0 {
		host, port, _ := net.SplitHostPort(s.lis.Addr().String())
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			if h, err := os.Hostname(); err == nil {
				host = h
			}
		}
		scheme := "http"
		if s.serverTLS != nil {
			scheme = "https"
		}
		urls = []string{scheme + "://" + net.JoinHostPort(host, port)}
	}
	name := urls[0]
	if u, err := url.Parse(urls[0]); err == nil && u.Host != "" {
		name = u.Host
	}
	return passthrough.Member{Name: name, ClientURLs: urls}
}

// tlsMode is how the port is served, for the start line.
func tlsMode(cfg *tls.Config) string {
	switch {
	case cfg == nil:
		return "off"
	case cfg.ClientAuth == tls.RequireAndVerifyClientCert:
		return "mtls"
	}
	return "on"
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.lis.Addr() }

// Client is the proxy's own etcd client.
func (s *Server) Client() *clientv3.Client { return s.access.Own() }

// Registry holds the proxy's metrics.
func (s *Server) Registry() *prometheus.Registry { return s.cfg.Registry }
