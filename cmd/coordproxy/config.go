package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/kelseyhightower/envconfig"
)

// Config is coordproxy's whole configuration. Each field is read from the
// environment variable COORDPROXY_<envconfig tag> and can be overridden by
// the flag --<flag tag>.
type Config struct {
	Endpoints       string        `envconfig:"ENDPOINTS" flag:"endpoints" desc:"comma-separated etcd client URLs (http://host:port); empty starts an embedded etcd (dev mode)"`
	Listen          string        `envconfig:"LISTEN" flag:"listen" default:"127.0.0.1:23790" desc:"address to serve gRPC on"`
	DataDir         string        `envconfig:"DATA_DIR" flag:"data-dir" default:"coordproxy.etcd" desc:"data directory of the embedded etcd (dev mode only)"`
	DialTimeout     time.Duration `envconfig:"DIAL_TIMEOUT" flag:"dial-timeout" default:"5s" desc:"bound for connecting to etcd"`
	RequestTimeout  time.Duration `envconfig:"REQUEST_TIMEOUT" flag:"request-timeout" default:"5s" desc:"bound for every etcd call the proxy makes on its own (cleanup of abandoned waiters, watch snapshots)"`
	ShutdownTimeout time.Duration `envconfig:"SHUTDOWN_TIMEOUT" flag:"shutdown-timeout" default:"10s" desc:"bound for the graceful stop on SIGINT/SIGTERM before it is forced"`
	MaxEtcdRequests int           `envconfig:"MAX_ETCD_REQUESTS" flag:"max-etcd-requests" default:"128" desc:"most unary etcd requests in flight at once; more calls wait in the proxy instead of overloading etcd"`
	Namespace       string        `envconfig:"NAMESPACE" flag:"namespace" desc:"key prefix, ending in /, under which every key the proxy touches lives (locks, elections, KV, watches); keys in responses come back without it"`
	LogLevel        string        `envconfig:"LOG_LEVEL" flag:"log-level" default:"info" desc:"debug, info, warn or error"`
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
			fmt.Fprintln(usage, "Usage: coordproxy [flags]\n\nEach flag can also be set as COORDPROXY_<NAME> in the environment; flags win.")
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
		return fmt.Errorf("invalid %s=%q: %v", pe.KeyName, pe.Value, pe.Err)
	}
	return err
}

// bindFlags registers a flag for every field of c, named by its flag tag,
// with the value read from the environment as its default.
func bindFlags(fs *flag.FlagSet, c *Config) {
	v := reflect.ValueOf(c).Elem()
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		name := f.Tag.Get("flag")
		usage := fmt.Sprintf("%s (env %s_%s)", f.Tag.Get("desc"), envPrefix, f.Tag.Get("envconfig"))
		switch p := v.Field(i).Addr().Interface().(type) {
		case *string:
			fs.StringVar(p, name, *p, usage)
		case *time.Duration:
			fs.DurationVar(p, name, *p, usage)
		case *bool:
			fs.BoolVar(p, name, *p, usage)
		case *int:
			fs.IntVar(p, name, *p, usage)
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
	endpoints, err := parseEndpoints(c.Endpoints)
	if err != nil {
		return proxy.Config{}, 0, err
	}
	if err := checkListen(c.Listen); err != nil {
		return proxy.Config{}, 0, err
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"dial-timeout", c.DialTimeout}, {"request-timeout", c.RequestTimeout}, {"shutdown-timeout", c.ShutdownTimeout}} {
		if d.v <= 0 {
			return proxy.Config{}, 0, fmt.Errorf("invalid --%s %s: must be positive", d.name, d.v)
		}
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
	return proxy.Config{
		Endpoints:       endpoints,
		Listen:          c.Listen,
		DataDir:         c.DataDir,
		DialTimeout:     c.DialTimeout,
		RequestTimeout:  c.RequestTimeout,
		ShutdownTimeout: c.ShutdownTimeout,
		MaxEtcdRequests: c.MaxEtcdRequests,
		Namespace:       c.Namespace,
	}, level, nil
}

func parseEndpoints(s string) ([]string, error) {
	var eps []string
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
		eps = append(eps, ep)
	}
	return eps, nil
}

func checkListen(addr string) error {
	if err := checkHostPort(addr); err != nil {
		return fmt.Errorf("invalid --listen %q: %v", addr, err)
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
