package proxy

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// EmbeddedEtcd is a real single-member etcd running inside this process, on
// loopback ports chosen by the kernel.
type EmbeddedEtcd struct {
	URL string // client URL, http://127.0.0.1:port (https:// with ClientTLS)
	Dir string // absolute data directory

	e         *embed.Etcd
	level     zap.AtomicLevel
	closeOnce sync.Once
}

// EmbedOptions tune StartEmbeddedEtcd.
type EmbedOptions struct {
	// LogLevel of etcd's own logger (debug, info, warn, error).
	LogLevel string
	// UnsafeNoFsync trades durability for speed; for tests only.
	UnsafeNoFsync bool
	// StartTimeout bounds how long to wait for the member to serve.
	StartTimeout time.Duration
	// ClientAddr and PeerAddr fix the loopback ports (host:port); empty lets
	// the kernel choose. A test that restarts etcd under a running proxy
	// needs the same client address both times.
	ClientAddr, PeerAddr string
	// ClientTLS, when set, serves the client URL over https with these
	// files (and asks for client certificates if it says so), for tests of
	// the proxy's etcd-facing TLS.
	ClientTLS *transport.TLSInfo
	// EnablePprof serves etcd's own /debug/pprof on its client URL
	// (etcd's --enable-pprof), for coordbench's -etcd-profile.
	EnablePprof bool
	// MaxRequestBytes is etcd's --max-request-bytes (0: etcd's default). In
	// dev mode the proxy's own limit (Config.MaxRequestBytes).
	MaxRequestBytes uint
	// TickMs and ElectionMs are etcd's --heartbeat-interval and
	// --election-timeout (0: etcd's 100 and 1000). A single member elects
	// itself after about one tick plus the ticks it must wait out; tests use
	// 10 and 100, which start it in tens of milliseconds instead of most of
	// a second (the minimum lease TTL becomes 1 s instead of 2 s).
	TickMs, ElectionMs uint
}

// StartEmbeddedEtcd starts etcd with its data in dir (created if missing); an
// existing data dir is reused with its data.
func StartEmbeddedEtcd(dir string, opts EmbedOptions) (*EmbeddedEtcd, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "error"
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = time.Minute
	}
	cfg := embed.NewConfig()
	cfg.Name = "coordproxy-dev"
	cfg.Dir = abs
	// Port 0: the kernel picks free ports, so dev mode never collides with an
	// etcd already running on 2379. A single member never dials its peer URL,
	// so the stored ":0" peer URL stays valid across restarts.
	clientURL := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	peerURL := clientURL
	if opts.ClientAddr != "" {
		clientURL.Host = opts.ClientAddr
	}
	if opts.PeerAddr != "" {
		peerURL.Host = opts.PeerAddr
	}
	if opts.ClientTLS != nil {
		clientURL.Scheme = "https"
		cfg.ClientTLSInfo = *opts.ClientTLS
	}
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.EnablePprof = opts.EnablePprof
	level, err := zap.ParseAtomicLevel(opts.LogLevel)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd log level: %w", err)
	}
	zcfg := zap.NewProductionConfig()
	zcfg.Level = level
	zcfg.Sampling = nil
	lg, err := zcfg.Build()
	if err != nil {
		return nil, err
	}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	cfg.UnsafeNoFsync = opts.UnsafeNoFsync
	if opts.MaxRequestBytes > 0 {
		cfg.MaxRequestBytes = opts.MaxRequestBytes
	}
	if opts.TickMs > 0 {
		cfg.TickMs = opts.TickMs
	}
	if opts.ElectionMs > 0 {
		cfg.ElectionMs = opts.ElectionMs
	}

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd in %s: %w", abs, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-time.After(opts.StartTimeout):
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s did not become ready within %s", abs, opts.StartTimeout)
	}
	return &EmbeddedEtcd{URL: clientURL.Scheme + "://" + e.Clients[0].Addr().String(), Dir: abs, e: e, level: level}, nil
}

// Close stops the member; its data stays in Dir.
func (e *EmbeddedEtcd) Close() {
	e.closeOnce.Do(func() {
		// etcd logs each listener it closes as a serving failure; a stop we
		// asked for is not one.
		e.level.SetLevel(zap.FatalLevel)
		e.e.Close()
	})
}
