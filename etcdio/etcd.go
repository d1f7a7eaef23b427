package etcdio

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// Defaults of Config, named once; proxy.DefaultConfig takes them from here.
const (
	DefaultDialTimeout    = 5 * time.Second
	DefaultRequestTimeout = 5 * time.Second
	DefaultMaxRequests    = 128
)

// Config is how to reach etcd.
type Config struct {
	Endpoints   []string
	DialTimeout time.Duration // 0: DefaultDialTimeout
	// RequestTimeout bounds every etcd request the proxy makes on its own
	// and each attempt of a request that must learn its outcome (0:
	// DefaultRequestTimeout).
	RequestTimeout time.Duration
	// MaxRequests bounds the unary requests in flight (see limiter; 0:
	// DefaultMaxRequests).
	MaxRequests int
	// Workers is how many goroutines send the requests calls make before
	// they wait (see workers). 0: MaxRequests, since a request a worker
	// sends waits for a slot under MaxRequests anyway, so more workers than
	// slots would only park more goroutines.
	Workers int
	TLS     *tls.Config
	// Username and Password are the proxy's own etcd user. With one, calls
	// that carry a caller's own token go through a second client without
	// the proxy's credentials (see For).
	Username, Password string
	// Namespace, if not empty, is the key prefix every request lives under.
	Namespace string
	// Registry receives the limiter's and the error counter's metrics.
	Registry prometheus.Registerer
	Logger   *slog.Logger
	// Batching is how transactions share etcd requests (see batch.go).
	Batching Batching
	// TracerProvider, if set, traces the etcd requests (trace.go).
	TracerProvider trace.TracerProvider
}

// Etcd is every road from the proxy to etcd.
type Etcd struct {
	own     *clientv3.Client
	callers *clientv3.Client // nil without an own etcd user
	timeout time.Duration
	log     *slog.Logger
	workers *workers
	batches *batcher // nil: no group commit
	leader  *leaderWatch
	keeper  *keeper

	stopCtx context.Context
	stop    context.CancelFunc

	hooks LeaseHooks // lease.go
	seen  *seenRevision
}

// The etcd client logs only errors: its warnings are about retries the
// proxy handles itself.
const clientLogLevel = zap.ErrorLevel

// etcd judges request sizes itself; the client must not refuse first.
const maxClientMsgBytes = 1<<31 - 1

// Dial connects to etcd. ctx is the clients' context: its values reach
// every request, its end does not (the clients live until Close).
func Dial(ctx context.Context, cfg Config) (*Etcd, error) {
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.MaxRequests <= 0 {
		cfg.MaxRequests = DefaultMaxRequests
	}
	if cfg.Workers <= 0 {
		cfg.Workers = cfg.MaxRequests
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	zcfg := zap.NewProductionConfig()
	zcfg.Level = zap.NewAtomicLevelAt(clientLogLevel)
	zcfg.Sampling = nil
	zlog, err := zcfg.Build()
	if err != nil {
		return nil, err
	}
	errs := newErrorCounter(cfg.Registry)
	limiter := newLimiter(cfg.MaxRequests, cfg.Registry)
	seen := &seenRevision{}
	ccfg := clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialTimeout:          cfg.DialTimeout,
		DialKeepAliveTime:    30 * time.Second,
		DialKeepAliveTimeout: 10 * time.Second,
		MaxCallSendMsgSize:   maxClientMsgBytes,
		MaxCallRecvMsgSize:   maxClientMsgBytes,
		Logger:               zlog,
		Context:              context.WithoutCancel(ctx),
		TLS:                  cfg.TLS,
		Username:             cfg.Username,
		Password:             cfg.Password,
		// The limiter comes first, so that only requests that reach etcd
		// are judged for errors; the counter sees etcd's status before
		// noLeaderIsFinal turns "no leader" into the client's value.
		DialOptions: append([]grpc.DialOption{
			grpc.WithChainUnaryInterceptor(limiter.unary, noLeaderIsFinal, errs.unary, seen.unary),
			grpc.WithChainStreamInterceptor(errs.stream),
		}, traceDialOptions(cfg.TracerProvider)...),
	}
	e := &Etcd{timeout: cfg.RequestTimeout, log: cfg.Logger, seen: seen}
	if e.own, err = clientv3.New(ccfg); err != nil {
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	namespaced(e.own, cfg.Namespace)
	if cfg.Username != "" {
		// A caller's own etcd token must reach etcd alone: with the
		// proxy's credentials on the connection too, etcd would read the
		// proxy's token first (grpc-go sends the credentials' header
		// before the call's metadata). Same limiter, no credentials.
		ccfg.Username, ccfg.Password = "", ""
		if e.callers, err = clientv3.New(ccfg); err != nil {
			e.own.Close()
			return nil, fmt.Errorf("etcd client: %w", err)
		}
		namespaced(e.callers, cfg.Namespace)
	}
	e.stopCtx, e.stop = context.WithCancel(context.Background())
	e.workers = newWorkers(cfg.Workers)
	if cfg.Batching != BatchOff {
		e.batches = newBatcher(e, cfg.Registry, cfg.Batching == BatchAlways)
	}
	e.leader = newLeaderWatch(e.stopCtx, e.own.Watcher)
	e.keeper = newKeeper(e)
	return e, nil
}

// Own is the client with the proxy's own credentials, for what the proxy
// does on its own account: shared watches, cleanups, /readyz.
func (e *Etcd) Own() *clientv3.Client { return e.own }

// For is the client for an etcd request made on a caller's behalf. One that
// carries the caller's own etcd token (forwarded by the proxy as outgoing
// metadata) goes through the client without the proxy's credentials, so
// that etcd judges it as the caller's. Any other goes through Own.
func (e *Etcd) For(ctx context.Context) *clientv3.Client {
	if e.callers != nil {
		if md, ok := metadata.FromOutgoingContext(ctx); ok && len(md.Get(rpctypes.TokenFieldNameGRPC)) > 0 {
			return e.callers
		}
	}
	return e.own
}

// Conn is the connection of For(ctx)'s client, for the calls the proxy
// makes with etcd's generated gRPC clients rather than through the etcd
// client (watches and keep-alives relayed as they are, RangeStream,
// maintenance, auth). Every such client is made on it: it gives each call
// the options the etcd client gives its own (see rawConn), which the
// connection alone would not.
func (e *Etcd) Conn(ctx context.Context) grpc.ClientConnInterface { return rawConn(e.For(ctx)) }

// rawConn is cli's connection with the etcd client's call options: no
// size limit of its own on requests or responses (etcd judges requests,
// and its responses may be of any size, a watch response over gRPC's
// default 4 MiB included).
func rawConn(cli *clientv3.Client) grpc.ClientConnInterface {
	return callOptions{cli.ActiveConnection()}
}

type callOptions struct{ cc *grpc.ClientConn }

var unlimited = []grpc.CallOption{grpc.MaxCallRecvMsgSize(maxClientMsgBytes), grpc.MaxCallSendMsgSize(maxClientMsgBytes)}

func (c callOptions) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return c.cc.Invoke(ctx, method, args, reply, append(slices.Clip(unlimited), opts...)...)
}

func (c callOptions) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return c.cc.NewStream(ctx, desc, method, append(slices.Clip(unlimited), opts...)...)
}

// RequestTimeout is the bound of the proxy's own requests.
func (e *Etcd) RequestTimeout() time.Duration { return e.timeout }

// LeaderLost returns a channel closed when etcd has lost its leader (see
// leaderWatch).
func (e *Etcd) LeaderLost() <-chan struct{} { return e.leader.Lost() }

// Close stops the workers and closes the clients. Stop first, and let
// whatever still sends requests finish.
func (e *Etcd) Close() {
	e.stop()
	e.workers.close()
	if e.callers != nil {
		e.callers.Close()
	}
	e.own.Close()
}
