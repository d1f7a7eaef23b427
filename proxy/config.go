package proxy

import (
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/coordproxy/coordproxy/etcdio"
	"github.com/coordproxy/coordproxy/grant"
	"github.com/coordproxy/coordproxy/queue"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.etcd.io/etcd/server/v3/embed"
)

// Config is everything a Server needs; cmd/coordproxy fills it from flags and
// the environment.
type Config struct {
	// Endpoints are etcd client URLs. Empty means dev mode: a real
	// single-member etcd is started in this process with its data in DataDir.
	Endpoints []string
	// Listen is the gRPC address, host:port.
	Listen string
	// AdvertiseClientURLs are the URLs Cluster.MemberList lists this
	// replica with (empty: the listen address, see Server.advertised).
	AdvertiseClientURLs []string
	// RegisterMembers registers this replica in etcd (a key under
	// passthrough.MembersPrefix, in the namespace, on a 10 s lease) so that
	// MemberList through any replica that does lists them all; without it
	// MemberList lists this replica alone, as etcd's grpc-proxy without
	// --resolver-prefix.
	RegisterMembers bool
	// UnsharedWatches gives each client Watch stream an etcd stream of its
	// own, as before shared watches (passthrough.Watch): a switch to
	// compare or fall back; watchers share by default.
	UnsharedWatches bool
	// WatchLinger keeps a shared etcd watch this long after its last
	// watcher left (passthrough.WatchConfig.Linger): 0 cancels it then.
	WatchLinger time.Duration
	// ReadCacheKeys is how many keys the read cache keeps
	// (passthrough.ReadCache); 0: no cache (the binary's flag defaults to
	// 1024).
	ReadCacheKeys int
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
	// PolicyFile, if set, is the policy (package policy): who may do what
	// on which names and keys; reloaded when it changes. Empty: everyone may
	// do everything.
	PolicyFile string
	// HandshakeTimeout bounds how long a new connection may take to show
	// its protocol (first bytes, HTTP/2 preface and settings, TLS
	// handshake, an HTTP/1.1 request's header) before it is closed.
	HandshakeTimeout time.Duration
	// KeepaliveInterval and KeepaliveTimeout are the server's gRPC
	// keepalive: a connection with nothing received for the interval is
	// pinged, and closed if the ping is not answered within the timeout. A
	// session without heartbeats whose client's host vanished or whose
	// process is paused ends so (etcd's --grpc-keepalive-interval and
	// --grpc-keepalive-timeout); one with heartbeats ends a window after
	// its last heartbeat.
	KeepaliveInterval, KeepaliveTimeout time.Duration
	// SessionLockDelay is the least lock delay of every session: after a
	// session ended without a close (its window, or grace, passed), its
	// lease is revoked only this much later. 0: none (the default).
	SessionLockDelay time.Duration
	// Pprof serves net/http/pprof under /debug/pprof/ on the HTTP side of
	// the port.
	Pprof bool
	// Logger receives the proxy's logs; nil discards them.
	Logger *slog.Logger
	// TracerProvider, if set, traces every call (OpenTelemetry's gRPC
	// instrumentation, W3C trace context from the caller), the etcd requests
	// made for it, and its waits in the queue (coordproxy.queue.wait) and
	// for a slot to etcd (coordproxy.etcd.slot) as child spans. nil: no
	// tracing, at no cost. cmd/coordproxy sets it from OTEL_EXPORTER_OTLP_*.
	TracerProvider trace.TracerProvider
	// Registry receives the proxy's metrics; nil makes a private one with
	// the Go runtime's and the process's metrics too (go_*, process_*, as
	// etcd serves them).
	Registry *prometheus.Registry
	// ObserveBuffer is how many leader changes an Observe stream may fall
	// behind before it is ended with ResourceExhausted.
	ObserveBuffer int
	// MaxEtcdRequests bounds the unary etcd requests in flight from this
	// proxy. Calls beyond it wait here, on their own deadlines, rather than
	// pile up in etcd, which answers "too many requests" once its apply
	// backlog grows. Watches and lease keep-alive streams are not counted.
	// As many workers send the requests waiting calls make before they wait
	// (etcdio.Config.Workers).
	MaxEtcdRequests int
	// MaxRequestBytes is the largest request the proxy accepts, as etcd's
	// --max-request-bytes (whose default it takes): a Put, DeleteRange or
	// Txn larger is refused with etcd's "etcdserver: request is too large"
	// (InvalidArgument), and gRPC refuses any message larger than it plus
	// etcd's 512 KiB of overhead with ResourceExhausted, as on etcd. Set it
	// to the cluster's, so that the proxy refuses what etcd would and passes
	// on whatever etcd accepts. At most MaxRequestBytesLimit.
	MaxRequestBytes uint
	// EtcdBatching is how the proxy's transactions share etcd requests
	// (group commit; etcdio.Batching). The zero value batches what queued
	// while an earlier request was in flight.
	EtcdBatching etcdio.Batching
	// QueueLinger keeps a name's etcd watch this long after its last waiter
	// or observer left, so that alternating callers share it.
	QueueLinger time.Duration
	// HoldCheck is how often the keys this proxy granted and counts in
	// coordproxy_holders are read, to learn of the ones released through
	// another proxy or straight at etcd, or lost with their lease; releases
	// and lease revocations through this proxy count at once.
	HoldCheck time.Duration
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

// DefaultConfig is the configuration whose every default is named here and
// nowhere else above the layer that owns it; New fills the zero fields of a
// Config from it. cmd/coordproxy's flag defaults must equal it (its
// TestConfig_defaultsAreProxyDefaults).
func DefaultConfig() Config {
	return Config{
		Listen:          "127.0.0.1:23790",
		DataDir:         "coordproxy.etcd",
		DialTimeout:     etcdio.DefaultDialTimeout,
		RequestTimeout:  etcdio.DefaultRequestTimeout,
		ShutdownTimeout: 10 * time.Second,
		MaxEtcdRequests: etcdio.DefaultMaxRequests,
		MaxRequestBytes: embed.DefaultMaxRequestBytes,
		ObserveBuffer:   grant.DefaultObserveBuffer,
		QueueLinger:     queue.DefaultLinger,
		HoldCheck:       grant.DefaultHoldCheck,

		HandshakeTimeout:  10 * time.Second,
		KeepaliveInterval: 10 * time.Second,
		KeepaliveTimeout:  5 * time.Second,
	}
}

// withDefaults fills c's zero fields from DefaultConfig.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
		c.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	if c.Listen == "" {
		c.Listen = d.Listen
	}
	if c.DataDir == "" {
		c.DataDir = d.DataDir
	}
	for _, f := range []struct{ v, def *time.Duration }{
		{&c.DialTimeout, &d.DialTimeout}, {&c.RequestTimeout, &d.RequestTimeout},
		{&c.ShutdownTimeout, &d.ShutdownTimeout}, {&c.QueueLinger, &d.QueueLinger},
		{&c.HoldCheck, &d.HoldCheck},
		{&c.HandshakeTimeout, &d.HandshakeTimeout}, {&c.KeepaliveInterval, &d.KeepaliveInterval}, {&c.KeepaliveTimeout, &d.KeepaliveTimeout},
	} {
		if *f.v <= 0 {
			*f.v = *f.def
		}
	}
	if c.MaxEtcdRequests <= 0 {
		c.MaxEtcdRequests = d.MaxEtcdRequests
	}
	if c.MaxRequestBytes == 0 {
		c.MaxRequestBytes = d.MaxRequestBytes
	}
	c.MaxRequestBytes = min(c.MaxRequestBytes, MaxRequestBytesLimit)
	if c.ObserveBuffer <= 0 {
		c.ObserveBuffer = d.ObserveBuffer
	}
	return c
}
