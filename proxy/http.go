package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	coordproxyv1gw "github.com/coordproxy/coordproxy/proto/coordproxy/v1/gateway"
	gw "github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/tmc/grpc-websocket-proxy/wsproxy"
	etcdservergw "go.etcd.io/etcd/api/v3/etcdserverpb/gw"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	v3electiongw "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb/gw"
	v3lockgw "go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb/gw"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/encoding/protojson"
)

// ReadyTimeout bounds the etcd read behind /readyz.
const ReadyTimeout = 2 * time.Second

// gatewayServices are the services the JSON gateway serves, by their gRPC
// names: every served one but coordproxy.v1.SessionService, whose
// heartbeats need a gRPC stream both ways. The README lists them
// (readme_test.go, which also checks each name is a served service).
var gatewayServices = []struct {
	name     string
	register func(context.Context, *gw.ServeMux, *grpc.ClientConn) error
}{
	{"etcdserverpb.KV", etcdservergw.RegisterKVHandler},
	{"etcdserverpb.Watch", etcdservergw.RegisterWatchHandler},
	{"etcdserverpb.Lease", etcdservergw.RegisterLeaseHandler},
	{"etcdserverpb.Maintenance", etcdservergw.RegisterMaintenanceHandler},
	{"etcdserverpb.Auth", etcdservergw.RegisterAuthHandler},
	{"etcdserverpb.Cluster", etcdservergw.RegisterClusterHandler},
	{"v3lockpb.Lock", v3lockgw.RegisterLockHandler},
	{"v3electionpb.Election", v3electiongw.RegisterElectionHandler},
	{coordproxyv1.LockService_ServiceDesc.ServiceName, coordproxyv1gw.RegisterLockServiceHandler},
	{coordproxyv1.SemaphoreService_ServiceDesc.ServiceName, coordproxyv1gw.RegisterSemaphoreServiceHandler},
	{coordproxyv1.RWLockService_ServiceDesc.ServiceName, coordproxyv1gw.RegisterRWLockServiceHandler},
	{coordproxyv1.ElectionService_ServiceDesc.ServiceName, coordproxyv1gw.RegisterElectionServiceHandler},
}

// newGateway returns etcd's JSON gateway for the services the proxy serves,
// built as etcd builds its own (embed/serve.go): etcd's generated handlers,
// the same marshaler options (proto field names, int64 as strings), and
// streams over websocket too. It calls the proxy's gRPC services over conn.
func newGateway(ctx context.Context, conn *grpc.ClientConn, log *slog.Logger) (http.Handler, error) {
	gwmux := gw.NewServeMux(
		gw.WithMarshalerOption(gw.MIMEWildcard,
			&gw.HTTPBodyMarshaler{
				Marshaler: &gw.JSONPb{
					MarshalOptions:   protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: false},
					UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: true},
				},
			},
		),
	)
	for _, svc := range gatewayServices {
		if err := svc.register(ctx, gwmux, conn); err != nil {
			return nil, err
		}
	}
	return wsproxy.WebsocketProxy(gwmux,
		wsproxy.WithRequestMutator(func(_ *http.Request, out *http.Request) *http.Request {
			out.Method = "POST" // as etcd: streams are POSTs
			return out
		}),
		wsproxy.WithMaxRespBodyBufferSize(math.MaxInt32),
		wsproxy.WithLogger(wsLogger{log}),
	), nil
}

// dialInProcess connects the gateway to the proxy's gRPC server through lis,
// in memory.
func dialInProcess(lis *bufconn.Listener) (*grpc.ClientConn, error) {
	return grpc.NewClient("passthrough:///coordproxy-inprocess",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(math.MaxInt32), grpc.MaxCallSendMsgSize(math.MaxInt32)),
	)
}

type wsLogger struct{ log *slog.Logger }

func (w wsLogger) Warnln(v ...any)  { w.log.Warn(fmt.Sprint(v...), "component", "gateway") }
func (w wsLogger) Debugln(v ...any) { w.log.Debug(fmt.Sprint(v...), "component", "gateway") }

// httpMux serves the JSON gateway under /v3/ and /coordproxy/v1/, /healthz, /readyz, /metrics,
// and with Config.Pprof Go's profiles under /debug/pprof/.
func (s *Server) httpMux(gateway http.Handler) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/v3/", gateway)
	mux.Handle("/coordproxy/v1/", gateway)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, healthBody{Status: "ok"})
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := s.ready(r.Context()); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, healthBody{Status: "not ready", Reason: err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, healthBody{Status: "ok"})
	})
	mux.Handle("/metrics", promhttp.HandlerFor(s.cfg.Registry, promhttp.HandlerOpts{Registry: s.cfg.Registry}))
	if s.cfg.Pprof {
		// As net/http/pprof registers them on http.DefaultServeMux, which
		// the proxy does not serve.
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

type healthBody struct {
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

var errDraining = errors.New("coordproxy is shutting down")

// ready: the proxy is not stopping and etcd answers a linearizable read
// (which needs a leader) within ReadyTimeout, as etcd's own /health checks.
// A read refused for lack of permission still proves etcd is serving.
func (s *Server) ready(ctx context.Context) error {
	if s.drain.draining.Load() {
		return errDraining
	}
	ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), ReadyTimeout)
	defer cancel()
	_, err := s.access.Own().Get(ctx, "health")
	if err != nil && !errors.Is(err, rpctypes.ErrPermissionDenied) {
		err = fmt.Errorf("etcd: %w", err)
	} else {
		err = nil
	}
	s.lastReady.Store(&readiness{at: time.Now(), ok: err == nil})
	return err
}

// readiness is the last answer of ready.
type readiness struct {
	at time.Time
	ok bool
}

// readyFresh is how long coordproxy_ready reuses the last readiness answer
// (a load balancer's /readyz checks keep it fresh), so that a scrape asks
// etcd at most that often.
const readyFresh = 5 * time.Second

// readyGauge is coordproxy_ready: the last answer while fresh, else a new
// one.
func (s *Server) readyGauge() float64 {
	ok := false
	if r := s.lastReady.Load(); r != nil && time.Since(r.at) < readyFresh {
		ok = r.ok && !s.drain.draining.Load() // ready answers draining without asking etcd
	} else {
		ok = s.ready(context.Background()) == nil
	}
	if ok {
		return 1
	}
	return 0
}
