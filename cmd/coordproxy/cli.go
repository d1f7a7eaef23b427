package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/coordproxy/coordproxy/client"
	"github.com/coordproxy/coordproxy/session"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/term"
)

// The client subcommands (lock, elect, describe) talk to a running
// coordproxy, never to etcd: the proxy passes etcd's Lease service through,
// so their sessions keep their leases alive through it.

// defaultAddr is where `go run ./cmd/coordproxy` serves.
const defaultAddr = "127.0.0.1:23790"

// cliFlags are the flags every client subcommand has.
type cliFlags struct {
	addr        string
	ttl         int
	window      time.Duration
	lockDelay   time.Duration
	dialTimeout time.Duration
	cacert      string
	cert        string
	key         string
}

func (c *cliFlags) register(fs *flag.FlagSet) {
	addr := os.Getenv("COORDPROXY_ADDR")
	if addr == "" {
		addr = defaultAddr
	}
	fs.StringVar(&c.addr, "addr", addr, "comma-separated host:port of coordproxy replicas (env COORDPROXY_ADDR)")
	fs.IntVar(&c.ttl, "ttl", 10, "TTL in seconds of the lease held while waiting and holding; kept alive while the command runs")
	fs.DurationVar(&c.window, "window", client.DefaultWindow, "the session's window: coordproxy releases what this process holds this long after its last heartbeat (if it dies, is cut off or paused), and this process stops its command before then; longer rides out longer network trouble")
	fs.DurationVar(&c.lockDelay, "lock-delay", 0, "ask coordproxy to release what this process holds only this much after the window passed without a heartbeat (at most 1m): for a command that may pause and writes to something that cannot check the fencing token")
	fs.DurationVar(&c.dialTimeout, "dial-timeout", 5*time.Second, "bound for connecting to coordproxy")
	fs.StringVar(&c.cacert, "cacert", "", "CA certificates (PEM) that verify a coordproxy serving TLS")
	fs.StringVar(&c.cert, "cert", "", "client certificate (PEM) for a coordproxy that requires one")
	fs.StringVar(&c.key, "key", "", "private key (PEM) of --cert")
}

func (c *cliFlags) check() error {
	if c.ttl < 1 {
		return fmt.Errorf("invalid --ttl %d: must be at least 1 second", c.ttl)
	}
	if c.window < session.MinWindow || c.window > session.MaxWindow {
		return fmt.Errorf("invalid --window %s: must be between %s and %s", c.window, session.MinWindow, session.MaxWindow)
	}
	if c.lockDelay < 0 || c.lockDelay > session.MaxLockDelay {
		return fmt.Errorf("invalid --lock-delay %s: must be between 0s and %s", c.lockDelay, session.MaxLockDelay)
	}
	if (c.cert == "") != (c.key == "") {
		return errors.New("--cert and --key go together")
	}
	for _, a := range strings.Split(c.addr, ",") {
		if strings.TrimSpace(a) == "" {
			return fmt.Errorf("invalid --addr %q: want host:port[,host:port...]", c.addr)
		}
	}
	return nil
}

// dial connects to coordproxy.
func (c *cliFlags) dial(ctx context.Context) (*clientv3.Client, error) {
	cfg := clientv3.Config{
		Endpoints:   strings.Split(c.addr, ","),
		DialTimeout: c.dialTimeout,
		Logger:      zap.NewNop(),
		Context:     ctx,
	}
	if c.cacert != "" || c.cert != "" {
		tlsInfo := transport.TLSInfo{TrustedCAFile: c.cacert, CertFile: c.cert, KeyFile: c.key}
		tls, err := tlsInfo.ClientConfig()
		if err != nil {
			return nil, err
		}
		cfg.TLS = tls
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, err
	}
	// New does not wait for the connection: a status call tells at once
	// whether a coordproxy answers there.
	sctx, cancel := context.WithTimeout(ctx, c.dialTimeout)
	defer cancel()
	if _, err := cli.Status(sctx, cfg.Endpoints[0]); err != nil {
		cli.Close()
		return nil, fmt.Errorf("no coordproxy answers at %s: %w", c.addr, err)
	}
	return cli, nil
}

// session grants the lease the command holds with, kept alive until Close.
func (c *cliFlags) session(cli *clientv3.Client) (*client.Session, error) {
	return client.NewSession(cli, client.WithTTL(int64(c.ttl)), client.WithWindow(c.window), client.WithLockDelay(c.lockDelay))
}

// killGrace registers --kill-grace, for the commands that run CMD.
func killGrace(fs *flag.FlagSet) *time.Duration {
	return fs.Duration("kill-grace", defaultKillGrace, "how long before the session's safe-until CMD and every process it started get SIGTERM when the session is not renewed in time (SIGKILL follows at safe-until); at most half of --window")
}

// defaultKillGrace leaves CMD 150 ms to stop after SIGTERM. With the
// default window a session is then stopped when no heartbeat was answered
// for about 340 ms beyond the usual quarter window (750 − 75 − 187 − 150):
// a longer grace would stop commands of healthy sessions on a loaded
// machine (seen with 250 ms: a pause of 240 ms sufficed). A command that
// needs longer to stop wants a longer --window too.
const defaultKillGrace = 150 * time.Millisecond

// checkKillGrace: with more than half the window, a healthy session whose
// answers come a little late would already get SIGTERM.
func checkKillGrace(grace, window time.Duration) error {
	if grace < 0 || grace > window/2 {
		return fmt.Errorf("invalid --kill-grace %s: must be between 0s and half of --window (%s)", grace, window/2)
	}
	return nil
}

// parseCLI parses a subcommand's flags; done is true when it printed help
// or a usage error (code is then the exit code).
func parseCLI(fs *flag.FlagSet, usage string, args []string, stdout, stderr io.Writer) (code int, done bool) {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stdout, usage)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return 0, true
		}
		return cliUsageError(stderr, fs.Name(), err.Error()), true
	}
	return 0, false
}

func cliUsageError(stderr io.Writer, cmd, msg string) int {
	fmt.Fprintf(stderr, "%s: %s (see %s -h)\n", cmd, msg, cmd)
	return 2
}

// isTerminal tells whether w is a terminal, where progress is redrawn in
// place rather than printed line by line.
func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// since formats how long ago t was, for humans.
func since(t time.Time) string {
	return time.Since(t).Truncate(100 * time.Millisecond).String()
}
