package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/session"
	"github.com/kelseyhightower/envconfig"
)

// Config is coordproxy's whole configuration. Each field is read from the
// environment variable COORDPROXY_<envconfig tag> and can be overridden by
// the flag --<flag tag>.
type Config struct {
	Endpoints           string        `envconfig:"ENDPOINTS" flag:"endpoints" desc:"comma-separated etcd client URLs (http://host:port, or all https://); empty starts an embedded etcd (dev mode)"`
	Listen              string        `envconfig:"LISTEN" flag:"listen" default:"127.0.0.1:23790" desc:"address to serve gRPC on"`
	AdvertiseClientURLs string        `envconfig:"ADVERTISE_CLIENT_URLS" flag:"advertise-client-urls" desc:"comma-separated URLs clients reach this replica at, listed by Cluster.MemberList (etcdctl member list, clients that sync their endpoints); empty: the listen address"`
	RegisterMembers     bool          `envconfig:"REGISTER_MEMBERS" flag:"register-members" default:"false" desc:"register this replica in etcd (under __coordproxy/members/ on a 10s lease) so that Cluster.MemberList through any registering replica lists them all; without it MemberList lists this replica alone"`
	ShareWatches        bool          `envconfig:"SHARE_WATCHES" flag:"share-watches" default:"true" desc:"let watchers of the same key range, credentials and prev_kv on this replica share one etcd watch (each keeps etcd's semantics); false gives each client Watch stream an etcd stream of its own"`
	WatchLinger         time.Duration `envconfig:"WATCH_LINGER" flag:"watch-linger" default:"0s" desc:"keep a shared etcd watch this long after its last watcher left, so that watchers that come and go join it (with the events they missed) instead of each costing etcd a new watch; 0 cancels it with its last watcher; at most 1h"`
	ReadCacheKeys       int           `envconfig:"READ_CACHE_KEYS" flag:"read-cache-keys" default:"1024" desc:"answer serializable reads of single keys, from callers without an etcd token, from a cache of up to this many keys (each read twice within a minute, kept while read, each an etcd watch) kept up to date by etcd watches; an answer carries the revision it reflects, never older than one this replica answered; 0: no cache, every read goes to etcd"`
	DataDir             string        `envconfig:"DATA_DIR" flag:"data-dir" default:"coordproxy.etcd" desc:"data directory of the embedded etcd (dev mode only)"`
	DialTimeout         time.Duration `envconfig:"DIAL_TIMEOUT" flag:"dial-timeout" default:"5s" desc:"bound for connecting to etcd"`
	RequestTimeout      time.Duration `envconfig:"REQUEST_TIMEOUT" flag:"request-timeout" default:"5s" desc:"bound for every etcd call the proxy makes on its own (cleanup of abandoned waiters, watch snapshots)"`
	ShutdownTimeout     time.Duration `envconfig:"SHUTDOWN_TIMEOUT" flag:"shutdown-timeout" default:"10s" desc:"bound for the graceful stop on SIGINT/SIGTERM, drain delay included, before it is forced"`
	DrainDelay          time.Duration `envconfig:"DRAIN_DELAY" flag:"drain-delay" default:"0s" desc:"on SIGINT/SIGTERM, how long to keep serving with /readyz 503 and health NOT_SERVING before refusing new calls; behind a load balancer, more than its health-check interval times its failure threshold; shorter than --shutdown-timeout"`
	PolicyFile          string        `envconfig:"POLICY" flag:"policy" desc:"YAML file of rules matching caller identities to name prefixes and verbs (lock, elect, read, write, lease, admin); whatever no rule allows is refused; reloaded when it changes; empty: everyone may do everything"`
	HandshakeTimeout    time.Duration `envconfig:"HANDSHAKE_TIMEOUT" flag:"handshake-timeout" default:"10s" desc:"close a new connection that has not shown its protocol (first bytes, HTTP/2 preface, TLS handshake, an HTTP/1.1 request's header) within this long"`
	KeepaliveInterval   time.Duration `envconfig:"GRPC_KEEPALIVE_INTERVAL" flag:"grpc-keepalive-interval" default:"10s" desc:"ping a client connection after this long with nothing received from it; with --grpc-keepalive-timeout, how soon a vanished or paused client's sessions without heartbeats end"`
	KeepaliveTimeout    time.Duration `envconfig:"GRPC_KEEPALIVE_TIMEOUT" flag:"grpc-keepalive-timeout" default:"5s" desc:"close a client connection whose ping is not answered within this long"`
	SessionLockDelay    time.Duration `envconfig:"SESSION_LOCK_DELAY" flag:"session-lock-delay" default:"0s" desc:"the least lock delay of every session: after a session ends without a close (a window past its last heartbeat), its lease is revoked only this much later, so that a holder paused between checking its window and writing cannot overlap the next one by less; at most 1m"`
	MaxRequestBytes     uint          `envconfig:"MAX_REQUEST_BYTES" flag:"max-request-bytes" default:"1572864" desc:"the largest request the proxy accepts, as etcd's flag of the same name: a write larger is refused with etcd's \"etcdserver: request is too large\", and any message larger than it plus 512 KiB with gRPC's ResourceExhausted; set it to the cluster's"`
	MaxEtcdRequests     int           `envconfig:"MAX_ETCD_REQUESTS" flag:"max-etcd-requests" default:"128" desc:"most unary etcd requests in flight at once; more calls wait in the proxy instead of overloading etcd"`
	Namespace           string        `envconfig:"NAMESPACE" flag:"namespace" desc:"key prefix, ending in /, under which every key the proxy touches lives (locks, elections, KV, watches); keys in responses come back without it"`
	LogLevel            string        `envconfig:"LOG_LEVEL" flag:"log-level" default:"info" desc:"debug, info, warn or error"`
	LogFormat           string        `envconfig:"LOG_FORMAT" flag:"log-format" default:"text" desc:"text (key=value) or json, one record a line"`
	Pprof               bool          `envconfig:"PPROF" flag:"pprof" default:"false" desc:"serve Go's runtime profiles (net/http/pprof) under /debug/pprof/ on the listen port"`
	GCHeadroomBytes     uint          `envconfig:"GC_HEADROOM_BYTES" flag:"gc-headroom-bytes" default:"67108864" desc:"unless GOGC is set, let the heap grow by at least this much past what is live before Go's collector runs again (GOGC=100 lets it grow by what is live: a small heap is collected many times a second under load); 0: Go's default"`
	AutoGoMemLimit      bool          `envconfig:"AUTO_GOMEMLIMIT" flag:"auto-gomemlimit" default:"true" desc:"unless GOMEMLIMIT is set, set the Go runtime's soft memory limit to 90% of the container's memory limit (cgroup memory.max), if it has one"`

	// Named as in proxy.Config, whose FileError names the field: fileError
	// finds the flag by that name.
	CertFile       string `envconfig:"CERT_FILE" flag:"cert-file" desc:"certificate (PEM) of the proxy's port; with --key-file the port serves TLS only"`
	KeyFile        string `envconfig:"KEY_FILE" flag:"key-file" desc:"private key (PEM) of --cert-file"`
	TrustedCAFile  string `envconfig:"TRUSTED_CA_FILE" flag:"trusted-ca-file" desc:"CA certificates (PEM) that sign client certificates; goes with --client-cert-auth"`
	ClientCertAuth bool   `envconfig:"CLIENT_CERT_AUTH" flag:"client-cert-auth" default:"false" desc:"require every client to present a certificate signed by --trusted-ca-file (mTLS)"`

	EtcdCACert       string `envconfig:"ETCD_CACERT" flag:"etcd-cacert" desc:"CA certificates (PEM) that verify etcd's https:// endpoints; empty uses the system's roots"`
	EtcdCert         string `envconfig:"ETCD_CERT" flag:"etcd-cert" desc:"client certificate (PEM) the proxy presents to etcd"`
	EtcdKey          string `envconfig:"ETCD_KEY" flag:"etcd-key" desc:"private key (PEM) of --etcd-cert"`
	EtcdUsername     string `envconfig:"ETCD_USERNAME" flag:"etcd-username" desc:"the proxy's own etcd user, for everything it does in etcd"`
	EtcdPassword     string `envconfig:"ETCD_PASSWORD" flag:"etcd-password" secret:"true" desc:"password of --etcd-username"`
	EtcdPasswordFile string `envconfig:"ETCD_PASSWORD_FILE" flag:"etcd-password-file" desc:"file holding the password of --etcd-username (one trailing newline is ignored)"`
}

const envPrefix = "COORDPROXY"

// errHelp: -h was asked for and usage printed.
var errHelp = errors.New("help requested")

// parseConfig reads the environment, then flags over it.
func parseConfig(args []string, usage io.Writer) (Config, error) {
	var c Config
	if err := envconfig.Process(envPrefix, &c); err != nil {
		return c, envError(err)
	}
	fs := flag.NewFlagSet("coordproxy", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	bindFlags(fs, &c)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(usage)
			fmt.Fprintln(usage, "Usage: coordproxy [flags]\n"+
				"       coordproxy lock|elect|describe [flags] NAME ...   (clients of a running proxy; -h for each)\n"+
				"       coordproxy probe URL                             (health check)\n\n"+
				"Each flag can also be set as COORDPROXY_<NAME> in the environment; flags win.")
			fs.PrintDefaults()
			return c, errHelp
		}
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return c, nil
}

// envError shortens envconfig's message to the variable and the problem.
func envError(err error) error {
	var pe *envconfig.ParseError
	if errors.As(err, &pe) {
		return fmt.Errorf("invalid %s=%q: %w", pe.KeyName, pe.Value, pe.Err)
	}
	return err
}

// bindFlags registers a flag for every field of c, named by its flag tag,
// with the value read from the environment as its default. A secret's
// default is kept but not shown by -h.
func bindFlags(fs *flag.FlagSet, c *Config) {
	v := reflect.ValueOf(c).Elem()
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		name := f.Tag.Get("flag")
		usage := fmt.Sprintf("%s (env %s_%s)", f.Tag.Get("desc"), envPrefix, f.Tag.Get("envconfig"))
		switch p := v.Field(i).Addr().Interface().(type) {
		case *string:
			if f.Tag.Get("secret") == "true" {
				fromEnv := *p
				fs.StringVar(p, name, "", usage)
				*p = fromEnv
				continue
			}
			fs.StringVar(p, name, *p, usage)
		case *time.Duration:
			fs.DurationVar(p, name, *p, usage)
		case *bool:
			fs.BoolVar(p, name, *p, usage)
		case *int:
			fs.IntVar(p, name, *p, usage)
		case *uint:
			fs.UintVar(p, name, *p, usage)
		default:
			panic("config field of unsupported type: " + f.Name)
		}
	}
}

// proxyConfig validates c and turns it into the proxy's plain config.
func (c Config) proxyConfig() (proxy.Config, slog.Level, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return proxy.Config{}, 0, fmt.Errorf("invalid --log-level %q: want debug, info, warn or error", c.LogLevel)
	}
	if _, err := newLogHandler(c.LogFormat, io.Discard, level); err != nil {
		return proxy.Config{}, 0, err
	}
	endpoints, err := parseEndpoints(c.Endpoints)
	if err != nil {
		return proxy.Config{}, 0, err
	}
	if err := checkListen(c.Listen); err != nil {
		return proxy.Config{}, 0, err
	}
	advertise, err := parseAdvertise(c.AdvertiseClientURLs)
	if err != nil {
		return proxy.Config{}, 0, err
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"dial-timeout", c.DialTimeout}, {"request-timeout", c.RequestTimeout}, {"shutdown-timeout", c.ShutdownTimeout},
		{"handshake-timeout", c.HandshakeTimeout}, {"grpc-keepalive-interval", c.KeepaliveInterval}, {"grpc-keepalive-timeout", c.KeepaliveTimeout}} {
		if d.v <= 0 {
			return proxy.Config{}, 0, fmt.Errorf("invalid --%s %s: must be positive", d.name, d.v)
		}
	}
	switch {
	case c.DrainDelay < 0:
		return proxy.Config{}, 0, fmt.Errorf("invalid --drain-delay %s: must not be negative", c.DrainDelay)
	case c.DrainDelay >= c.ShutdownTimeout:
		return proxy.Config{}, 0, fmt.Errorf("invalid --drain-delay %s: must be shorter than --shutdown-timeout %s, which includes it", c.DrainDelay, c.ShutdownTimeout)
	}
	if c.ReadCacheKeys < 0 {
		return proxy.Config{}, 0, fmt.Errorf("invalid --read-cache-keys %d: must be 0 or more", c.ReadCacheKeys)
	}
	if c.WatchLinger < 0 || c.WatchLinger > time.Hour {
		return proxy.Config{}, 0, fmt.Errorf("invalid --watch-linger %s: must be between 0s and 1h", c.WatchLinger)
	}
	if c.SessionLockDelay < 0 || c.SessionLockDelay > session.MaxLockDelay {
		return proxy.Config{}, 0, fmt.Errorf("invalid --session-lock-delay %s: must be between 0s and %s", c.SessionLockDelay, session.MaxLockDelay)
	}
	if c.MaxRequestBytes == 0 || c.MaxRequestBytes > proxy.MaxRequestBytesLimit {
		return proxy.Config{}, 0, fmt.Errorf("invalid --max-request-bytes %d: must be between 1 and %d", c.MaxRequestBytes, proxy.MaxRequestBytesLimit)
	}
	if c.MaxEtcdRequests <= 0 {
		return proxy.Config{}, 0, fmt.Errorf("invalid --max-etcd-requests %d: must be positive", c.MaxEtcdRequests)
	}
	if c.Namespace != "" && !strings.HasSuffix(c.Namespace, "/") {
		return proxy.Config{}, 0, fmt.Errorf("invalid --namespace %q: must end in \"/\", or namespace %q would also hold the keys of namespace %q", c.Namespace, c.Namespace, c.Namespace+"x/")
	}
	if len(endpoints) == 0 && strings.TrimSpace(c.DataDir) == "" {
		return proxy.Config{}, 0, errors.New("invalid --data-dir: dev mode (no --endpoints) needs a data directory")
	}
	if err := c.checkTLS(endpoints); err != nil {
		return proxy.Config{}, 0, err
	}
	password, err := c.etcdPassword()
	if err != nil {
		return proxy.Config{}, 0, err
	}
	pc := proxy.Config{
		Endpoints:           endpoints,
		Listen:              c.Listen,
		AdvertiseClientURLs: advertise,
		RegisterMembers:     c.RegisterMembers,
		UnsharedWatches:     !c.ShareWatches,
		WatchLinger:         c.WatchLinger,
		ReadCacheKeys:       c.ReadCacheKeys,
		DataDir:             c.DataDir,
		DialTimeout:         c.DialTimeout,
		RequestTimeout:      c.RequestTimeout,
		ShutdownTimeout:     c.ShutdownTimeout,
		DrainDelay:          c.DrainDelay,
		PolicyFile:          c.PolicyFile,
		HandshakeTimeout:    c.HandshakeTimeout,
		KeepaliveInterval:   c.KeepaliveInterval,
		KeepaliveTimeout:    c.KeepaliveTimeout,
		SessionLockDelay:    c.SessionLockDelay,
		Pprof:               c.Pprof,
		MaxEtcdRequests:     c.MaxEtcdRequests,
		MaxRequestBytes:     c.MaxRequestBytes,
		Namespace:           c.Namespace,
		CertFile:            c.CertFile,
		KeyFile:             c.KeyFile,
		TrustedCAFile:       c.TrustedCAFile,
		ClientCertAuth:      c.ClientCertAuth,
		EtcdCACert:          c.EtcdCACert,
		EtcdCert:            c.EtcdCert,
		EtcdKey:             c.EtcdKey,
		EtcdUsername:        c.EtcdUsername,
		EtcdPassword:        password,
	}
	// The files are checked by the code that loads them when the proxy
	// starts, so that what passes here is what is served.
	if _, err := pc.ServerTLS(); err != nil {
		return proxy.Config{}, 0, fileError(err)
	}
	if _, err := pc.EtcdTLS(); err != nil {
		return proxy.Config{}, 0, fileError(err)
	}
	return pc, level, nil
}

// newLogHandler is log/slog's handler for --log-format, writing to w.
func newLogHandler(format string, w io.Writer, level slog.Level) (slog.Handler, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "text":
		return slog.NewTextHandler(w, opts), nil
	case "json":
		return slog.NewJSONHandler(w, opts), nil
	}
	return nil, fmt.Errorf("invalid --log-format %q: want text or json", format)
}

// checkTLS checks which TLS settings go together; the files themselves are
// checked by proxy.Config's ServerTLS and EtcdTLS.
func (c Config) checkTLS(endpoints []string) error {
	switch {
	case c.CertFile != "" && c.KeyFile == "":
		return errors.New("invalid --cert-file: needs --key-file")
	case c.KeyFile != "" && c.CertFile == "":
		return errors.New("invalid --key-file: needs --cert-file")
	case c.TrustedCAFile != "" && c.CertFile == "":
		return errors.New("invalid --trusted-ca-file: client certificates need TLS, set --cert-file and --key-file")
	case c.ClientCertAuth && c.TrustedCAFile == "":
		return errors.New("invalid --client-cert-auth: needs --trusted-ca-file, the CA that signs client certificates")
	case c.TrustedCAFile != "" && !c.ClientCertAuth:
		// etcd requires client certificates as soon as a CA is given;
		// saying so explicitly keeps one meaning for both settings.
		return errors.New("invalid --trusted-ca-file: it checks client certificates, set --client-cert-auth to require them")
	case c.EtcdCert != "" && c.EtcdKey == "":
		return errors.New("invalid --etcd-cert: needs --etcd-key")
	case c.EtcdKey != "" && c.EtcdCert == "":
		return errors.New("invalid --etcd-key: needs --etcd-cert")
	}
	https := len(endpoints) > 0 && strings.HasPrefix(strings.ToLower(endpoints[0]), "https://")
	for _, f := range []struct{ name, value string }{{"etcd-cacert", c.EtcdCACert}, {"etcd-cert", c.EtcdCert}} {
		if f.value != "" && !https {
			// etcd's client would drop TLS for http:// endpoints.
			return fmt.Errorf("invalid --%s: etcd TLS needs https:// --endpoints", f.name)
		}
	}
	return nil
}

// etcdPassword is --etcd-password or the content of --etcd-password-file,
// checked against --etcd-username.
func (c Config) etcdPassword() (string, error) {
	password, from := c.EtcdPassword, "--etcd-password"
	if c.EtcdPasswordFile != "" {
		if c.EtcdPassword != "" {
			return "", errors.New("invalid --etcd-password-file: --etcd-password is set too, give only one")
		}
		from = "--etcd-password-file"
		b, err := os.ReadFile(c.EtcdPasswordFile)
		if err != nil {
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return "", fmt.Errorf("invalid --etcd-password-file %q: %w", c.EtcdPasswordFile, err)
		}
		password = string(b)
		if p, ok := strings.CutSuffix(password, "\n"); ok {
			password = strings.TrimSuffix(p, "\r")
		}
		if password == "" {
			return "", fmt.Errorf("invalid --etcd-password-file %q: file is empty", c.EtcdPasswordFile)
		}
	}
	switch {
	case c.EtcdUsername != "" && password == "":
		return "", errors.New("invalid --etcd-username: needs --etcd-password or --etcd-password-file")
	case c.EtcdUsername == "" && password != "":
		return "", fmt.Errorf("invalid %s: needs --etcd-username", from)
	}
	return password, nil
}

// fileError names the flag of a certificate or key file that cannot be used.
func fileError(err error) error {
	var fe *proxy.FileError
	if errors.As(err, &fe) {
		if f, ok := reflect.TypeOf(Config{}).FieldByName(fe.Field); ok {
			return fmt.Errorf("invalid --%s %q: %w", f.Tag.Get("flag"), fe.Path, fe.Err)
		}
	}
	return fmt.Errorf("invalid TLS configuration: %w", err)
}

func parseEndpoints(s string) ([]string, error) {
	var eps []string
	var scheme string
	for _, ep := range strings.Split(s, ",") {
		ep = strings.TrimSpace(ep)
		if ep == "" {
			continue
		}
		u, err := url.Parse(ep)
		bad := err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
			(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil
		if !bad {
			bad = checkHostPort(u.Host) != nil
		}
		if bad {
			return nil, fmt.Errorf("invalid --endpoints entry %q: want an etcd client URL such as http://127.0.0.1:2379", ep)
		}
		if len(eps) > 0 && u.Scheme != scheme {
			// etcd's client would use the first endpoint's scheme for all.
			return nil, fmt.Errorf("invalid --endpoints: %q and %q mix http:// and https://", eps[0], ep)
		}
		eps, scheme = append(eps, ep), u.Scheme
	}
	return eps, nil
}

func checkListen(addr string) error {
	if err := checkHostPort(addr); err != nil {
		return fmt.Errorf("invalid --listen %q: %w", addr, err)
	}
	return nil
}

func checkHostPort(hp string) error {
	_, port, err := net.SplitHostPort(hp)
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	return nil
}

// parseAdvertise checks --advertise-client-urls: http:// or https:// URLs
// with a host and port, as etcd's --advertise-client-urls.
func parseAdvertise(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var urls []string
	for _, raw := range strings.Split(s, ",") {
		u, err := url.Parse(strings.TrimSpace(raw))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Port() == "" || u.Hostname() == "" || (u.Path != "" && u.Path != "/") {
			return nil, fmt.Errorf("invalid --advertise-client-urls %q: want http(s)://host:port[,...]", s)
		}
		urls = append(urls, u.Scheme+"://"+u.Host)
	}
	return urls, nil
}
