package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coordproxy/coordproxy/electionproxy"
	"github.com/coordproxy/coordproxy/lockproxy"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	middleware "github.com/grpc-ecosystem/go-grpc-middleware/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/soheilhy/cmux"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/test/bufconn"
)

// Config is everything a Server needs; cmd/coordproxy fills it from flags and
// the environment.
type Config struct {
	// Endpoints are etcd client URLs. Empty means dev mode: a real
	// single-member etcd is started in this process with its data in DataDir.
	Endpoints []string
	// Listen is the gRPC address, host:port.
	Listen string
	// DataDir holds the embedded etcd's data in dev mode.
	DataDir string
	// DialTimeout bounds connecting to etcd.
	DialTimeout time.Duration
	// RequestTimeout bounds every etcd call the proxy makes on its own.
	RequestTimeout time.Duration
	// ShutdownTimeout bounds the graceful stop before it is forced.
	ShutdownTimeout time.Duration
	// DrainDelay is how long Shutdown keeps serving new calls after /readyz
	// turned 503 and gRPC health NOT_SERVING, so that load balancers stop
	// sending calls here before they would be refused. It counts within the
	// shutdown bound.
	DrainDelay time.Duration
	// Pprof serves net/http/pprof under /debug/pprof/ on the HTTP side of
	// the port.
	Pprof bool
	// Logger receives the proxy's logs; nil discards them.
	Logger *slog.Logger
	// Registry receives the proxy's metrics; nil makes a private one.
	Registry *prometheus.Registry
	// ObserveBuffer is how many leader changes an Observe stream may fall
	// behind before it is ended with ResourceExhausted (0: 1024).
	ObserveBuffer int
	// MaxEtcdRequests bounds the unary etcd requests in flight from this
	// proxy (0: 128). Calls beyond it wait here, on their own deadlines,
	// rather than pile up in etcd, which answers "too many requests" once
	// its apply backlog grows. Watches and lease keep-alive streams are not
	// counted.
	MaxEtcdRequests int
	// QueueLinger keeps a name's etcd watch this long after its last waiter
	// or observer left (0: 30 s), so that alternating callers share it.
	QueueLinger time.Duration
	// Namespace, when set, is a key prefix ending in "/" under which every
	// key the proxy touches lives: locks, elections, KV and watches. Keys
	// in responses come back without it; nothing outside it can be read,
	// written or unlocked through the proxy.
	Namespace string
	// Embed tunes the dev-mode etcd.
	Embed EmbedOptions

	// CertFile and KeyFile, when set, make the port serve TLS only: gRPC,
	// the JSON gateway, health and metrics alike.
	CertFile, KeyFile string
	// TrustedCAFile and ClientCertAuth ask every client for a certificate
	// signed by the CA in TrustedCAFile (mTLS), as on an etcd member.
	TrustedCAFile  string
	ClientCertAuth bool

	// EtcdCACert verifies etcd's certificate (empty: the system's roots);
	// EtcdCert and EtcdKey are the proxy's client certificate for etcd.
	// They apply to https:// endpoints.
	EtcdCACert, EtcdCert, EtcdKey string
	// EtcdUsername and EtcdPassword are the proxy's own etcd user: every
	// etcd request of the proxy's client runs as this user, the calls it
	// makes for its callers as well as cleanup, watches and /readyz.
	EtcdUsername, EtcdPassword string
}

// Etcd's limits, so that requests the proxy forwards are judged as etcd
// judges them: 1.5 MiB of request plus gRPC overhead, and keepalive pings no
// more often than every 5 s.
const (
	maxRequestBytes    = 1.5*1024*1024 + 512*1024
	keepaliveMinTime   = 5 * time.Second
	defaultDialTimeout = 5 * time.Second
	defaultReqTimeout  = 5 * time.Second
	defaultStopTimeout = 10 * time.Second
	defaultMaxEtcdReqs = 128
	etcdClientLogLevel = zap.ErrorLevel
	maxClientCallBytes = 1<<31 - 1 // etcd judges request sizes; see sizeerr.go
	maxClientRecvBytes = 1<<31 - 1
	inprocBufferBytes  = 1 << 20
)

// Server is one coordproxy: a gRPC listener in front of an etcd cluster.
type Server struct {
	cfg Config
	log *slog.Logger

	lis      net.Listener
	etcd     *EmbeddedEtcd
	client   *clientv3.Client
	callers  *clientv3.Client // without the proxy's etcd user; nil without one
	backend  *lockproxy.Backend
	grpc     *grpc.Server
	health   *health.Server
	http     *http.Server
	mux      cmux.CMux
	inproc   *bufconn.Listener // the gateway's way into the gRPC server
	gwConn   *grpc.ClientConn
	draining atomic.Bool
	endDrain chan struct{} // closed to end the drain delay early (tests)
	refusing chan struct{} // closed when the drain delay is over
	refuse   sync.Once
	serveErr chan error
}

// Services the proxy serves, by their gRPC names; grpc.health.v1 reports
// each of them and "" for the whole server.
var servedServices = []string{
	"v3lockpb.Lock", "v3electionpb.Election",
	"etcdserverpb.KV", "etcdserverpb.Watch", "etcdserverpb.Lease", "etcdserverpb.Maintenance", "etcdserverpb.Auth",
	coordproxyv1.LockService_ServiceDesc.ServiceName, coordproxyv1.SemaphoreService_ServiceDesc.ServiceName,
	coordproxyv1.RWLockService_ServiceDesc.ServiceName, coordproxyv1.ElectionService_ServiceDesc.ServiceName,
}

// New returns a Server for cfg; Start or Run starts it.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = defaultDialTimeout
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = defaultReqTimeout
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = defaultStopTimeout
	}
	if cfg.MaxEtcdRequests <= 0 {
		cfg.MaxEtcdRequests = defaultMaxEtcdReqs
	}
	return &Server{cfg: cfg, log: cfg.Logger, serveErr: make(chan error, 1), endDrain: make(chan struct{}), refusing: make(chan struct{})}
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
// serves in the background.
func (s *Server) Start(ctx context.Context) (err error) {
	serverTLS, err := s.cfg.ServerTLS()
	if err != nil {
		return err
	}
	etcdTLS, err := s.cfg.EtcdTLS()
	if err != nil {
		return err
	}
	// Listen first: a taken port fails at once, before etcd is touched.
	s.lis, err = net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			s.closeBackends(context.Background())
			s.lis.Close()
		}
	}()

	endpoints := s.cfg.Endpoints
	if len(endpoints) == 0 {
		s.etcd, err = StartEmbeddedEtcd(s.cfg.DataDir, s.cfg.Embed)
		if err != nil {
			return err
		}
		endpoints = []string{s.etcd.URL}
		s.log.Info("dev mode: started embedded etcd", "url", s.etcd.URL, "data_dir", s.etcd.Dir)
	}

	zcfg := zap.NewProductionConfig()
	zcfg.Level = zap.NewAtomicLevelAt(etcdClientLogLevel)
	zcfg.Sampling = nil
	zlog, err := zcfg.Build()
	if err != nil {
		return err
	}
	etcdErrs := newEtcdErrors(s.cfg.Registry)
	limiter := newEtcdLimiter(s.cfg.MaxEtcdRequests, s.cfg.Registry)
	ccfg := clientv3.Config{
		Endpoints:            endpoints,
		DialTimeout:          s.cfg.DialTimeout,
		DialKeepAliveTime:    30 * time.Second,
		DialKeepAliveTimeout: 10 * time.Second,
		MaxCallSendMsgSize:   maxClientCallBytes,
		MaxCallRecvMsgSize:   maxClientRecvBytes,
		Logger:               zlog,
		Context:              context.WithoutCancel(ctx),
		TLS:                  etcdTLS,
		Username:             s.cfg.EtcdUsername,
		Password:             s.cfg.EtcdPassword,
		// The limiter comes first, so that only requests that reach etcd
		// are judged for errors; etcdErrs sees etcd's status before
		// noLeaderIsFinal turns "no leader" into the client's value.
		DialOptions: []grpc.DialOption{
			grpc.WithChainUnaryInterceptor(limiter.unary, noLeaderIsFinal, etcdErrs.unary),
			grpc.WithChainStreamInterceptor(etcdErrs.stream),
		},
	}
	s.client, err = clientv3.New(ccfg)
	if err != nil {
		return fmt.Errorf("etcd client: %w", err)
	}
	namespaced(s.client, s.cfg.Namespace)
	if s.cfg.EtcdUsername != "" {
		// A caller's own etcd token must reach etcd alone: with the
		// proxy's credentials on the connection too, etcd would read the
		// proxy's token first. Calls that carry one use this second
		// client, which has none of the proxy's (same limiter).
		ccfg.Username, ccfg.Password = "", ""
		if s.callers, err = clientv3.New(ccfg); err != nil {
			return fmt.Errorf("etcd client: %w", err)
		}
		namespaced(s.callers, s.cfg.Namespace)
	}

	s.backend = lockproxy.NewBackend(s.client, lockproxy.Options{
		Callers:        s.callers,
		RequestTimeout: s.cfg.RequestTimeout,
		ObserveBuffer:  s.cfg.ObserveBuffer,
		QueueLinger:    s.cfg.QueueLinger,
		Workers:        s.cfg.MaxEtcdRequests,
		Logger:         s.log,
		Metrics:        lockproxy.NewMetrics(s.cfg.Registry),
	})
	overrun := newOverrunCheck(s.log, s.cfg.RequestTimeout, s.cfg.Registry)
	rpcStats := newRPCStats(s.cfg.Registry, overrun)
	s.grpc = grpc.NewServer(
		grpc.MaxRecvMsgSize(maxRequestBytes),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: keepaliveMinTime}),
		grpc.StatsHandler(rpcStats),
		// One interceptor each: every chained one deepens the stack a
		// waiting call parks with (see rpcStats).
		grpc.UnaryInterceptor(s.edgeUnary),
		grpc.StreamInterceptor(s.edgeStream),
	)
	v3lockpb.RegisterLockServer(s.grpc, lockproxy.New(s.backend))
	v3electionpb.RegisterElectionServer(s.grpc, electionproxy.New(s.backend))
	pb.RegisterKVServer(s.grpc, &kvServer{b: s.backend})
	pb.RegisterWatchServer(s.grpc, &watchServer{ns: s.cfg.Namespace, b: s.backend})
	pb.RegisterLeaseServer(s.grpc, &leaseServer{ns: s.cfg.Namespace, b: s.backend})
	pb.RegisterMaintenanceServer(s.grpc, &maintenanceServer{b: s.backend})
	pb.RegisterAuthServer(s.grpc, &authServer{b: s.backend})
	coordproxyv1.RegisterLockServiceServer(s.grpc, lockproxy.NewLocks(s.backend))
	coordproxyv1.RegisterSemaphoreServiceServer(s.grpc, lockproxy.NewSemaphores(s.backend))
	coordproxyv1.RegisterRWLockServiceServer(s.grpc, lockproxy.NewRWLocks(s.backend))
	coordproxyv1.RegisterElectionServiceServer(s.grpc, electionproxy.NewElections(s.backend))
	s.health = health.NewServer()
	for _, svc := range append([]string{""}, servedServices...) {
		s.health.SetServingStatus(svc, healthpb.HealthCheckResponse_SERVING)
	}
	healthpb.RegisterHealthServer(s.grpc, s.health)
	if err := registerReflection(s.grpc); err != nil {
		return err
	}
	rpcStats.initialize(s.grpc)

	// The JSON gateway calls the same gRPC server in memory, without
	// going through the port and whatever it asks of clients.
	s.inproc = bufconn.Listen(inprocBufferBytes)
	s.gwConn, err = dialInProcess(s.inproc)
	if err != nil {
		return err
	}
	gateway, err := newGateway(context.WithoutCancel(ctx), s.gwConn, s.log)
	if err != nil {
		return err
	}
	s.http = &http.Server{Handler: s.httpMux(gateway), ReadHeaderTimeout: 10 * time.Second}
	// gRPC (HTTP/2) and HTTP/1 (the JSON gateway, health, metrics) share
	// the listen address, as on an etcd member; with TLS, cmux tells them
	// apart on the decrypted stream.
	muxLis := s.lis
	if serverTLS != nil {
		muxLis = tls.NewListener(s.lis, serverTLS)
	}
	s.mux = cmux.New(muxLis)
	grpcL := s.mux.Match(cmux.HTTP2())
	httpL := s.mux.Match(cmux.HTTP1Fast())
	serve := func(name string, f func() error) {
		go func() {
			if err := f(); err != nil && !s.draining.Load() && !errors.Is(err, grpc.ErrServerStopped) && !errors.Is(err, http.ErrServerClosed) {
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
	s.log.Info("serving etcd Lock, Election, KV, Watch and Lease APIs over gRPC and JSON, /healthz, /readyz, /metrics", "listen", s.lis.Addr().String(), "tls", tlsMode(serverTLS), "etcd", endpoints)
	return nil
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
func (s *Server) Client() *clientv3.Client { return s.client }

// Registry holds the proxy's metrics.
func (s *Server) Registry() *prometheus.Registry { return s.cfg.Registry }

// Shutdown stops the server in steps. First /readyz answers 503 and every
// gRPC health service NOT_SERVING, while calls are still served for the
// drain delay so that load balancers notice and send new calls elsewhere.
// Then new calls are refused with Unavailable, in-flight unary calls finish,
// waiting Lock and Campaign calls remove their keys and answer Unavailable,
// streams end; what is still running when ctx is done is cut off. Keys that
// clients hold stay: they belong to the clients' leases. Last the etcd
// client and, in dev mode, the embedded etcd are closed. ctx bounds the
// whole sequence, drain delay included.
func (s *Server) Shutdown(ctx context.Context) {
	s.draining.Store(true)
	s.health.Shutdown() // every service NOT_SERVING
	if d := s.cfg.DrainDelay; d > 0 {
		s.log.Info("draining: /readyz answers 503 and health NOT_SERVING; still serving", "drain_delay", d)
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-s.endDrain:
		case <-ctx.Done():
		}
		t.Stop()
	}
	s.log.Info("stopping: new calls are refused")
	s.refuse.Do(func() { close(s.refusing) })
	stopped := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(stopped)
	}()
	s.backend.Stop()
	select {
	case <-stopped:
	case <-ctx.Done():
		s.log.Warn("graceful stop timed out; closing remaining calls")
		s.grpc.Stop()
		<-stopped
	}
	// gRPC calls are over, the gateway's with them; GracefulStop closed
	// the in-memory listener too, and closeBackends closes the gateway's
	// connection.
	s.inproc.Close()
	if err := s.http.Shutdown(ctx); err != nil {
		s.http.Close()
	}
	s.mux.Close()
	s.lis.Close()
	s.closeBackends(ctx)
	s.log.Info("stopped")
}

// edgeUnary and edgeStream are the one edge every call passes: once the
// drain delay is over they answer new calls Unavailable, as a stopping etcd
// member does, so that clients connected before the listener closed learn at
// once to go elsewhere (health checks still answer, NOT_SERVING); they hand
// the caller's hasleader and token metadata on to etcd (forwardContext); and
// they give errors etcd's codes and texts (wireErr).
func (s *Server) edgeUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if s.refused(info.FullMethod) {
		return nil, rpctypes.ErrGRPCStopped
	}
	resp, err := handler(forwardContext(ctx), req)
	return resp, wireErr(info.FullMethod, err)
}

func (s *Server) edgeStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if s.refused(info.FullMethod) {
		return rpctypes.ErrGRPCStopped
	}
	if ctx := forwardContext(ss.Context()); ctx != ss.Context() {
		w := middleware.WrapServerStream(ss)
		w.WrappedContext = ctx
		ss = w
	}
	return wireErr(info.FullMethod, handler(srv, ss))
}

func (s *Server) refused(method string) bool {
	select {
	case <-s.refusing:
		return !strings.HasPrefix(method, "/"+healthpb.Health_ServiceDesc.ServiceName+"/")
	default:
		return false
	}
}

// closeBackends gives pending cleanups until ctx is done.
func (s *Server) closeBackends(ctx context.Context) {
	if s.gwConn != nil {
		s.gwConn.Close()
	}
	if s.inproc != nil {
		s.inproc.Close()
	}
	if s.backend != nil {
		s.backend.Close(ctx)
	}
	if s.callers != nil {
		s.callers.Close()
	}
	if s.client != nil {
		s.client.Close()
	}
	if s.etcd != nil {
		s.etcd.Close()
		s.log.Info("embedded etcd stopped", "data_dir", s.etcd.Dir)
	}
}
