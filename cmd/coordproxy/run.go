package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/coordproxy/coordproxy/internal/gcheadroom"
	"github.com/coordproxy/coordproxy/proxy"
)

// run is the whole program: it returns the exit code. Configuration errors
// exit 2, failures while running exit 1, both with one line on stderr.
// `coordproxy probe URL` is the health check command instead (probe.go);
// `coordproxy lock|elect|describe` are clients of a running proxy
// (lockcmd.go, electcmd.go, describecmd.go); `coordproxy __supervise` is the
// supervisor lock and elect run their command under (supervise.go).
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "probe":
			return probe(args[1:], stdout, stderr)
		case "lock":
			return lockCmd(args[1:], os.Stdin, stdout, stderr)
		case "elect":
			return electCmd(args[1:], os.Stdin, stdout, stderr)
		case "describe":
			return describeCmd(args[1:], stdout, stderr)
		case superviseArg:
			return supervise(args[1:])
		}
	}
	m := &Main{Stdout: stdout, Stderr: stderr}
	if err := m.ParseFlags(args); err != nil {
		if errors.Is(err, errHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "coordproxy: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := m.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "coordproxy: %s\n", oneLine(err))
		return 1
	}
	return 0
}

// Main is the coordproxy program: flags and environment in, a running proxy out.
type Main struct {
	Stdout, Stderr io.Writer
	Config         proxy.Config
	Level          slog.Level
	LogFormat      string // text or json
	// AutoGoMemLimit sets the runtime's soft memory limit from the
	// container's (setMemoryLimit).
	AutoGoMemLimit bool
	// GCHeadroom is the least heap growth between collections
	// (internal/gcheadroom); 0: Go's default.
	GCHeadroom uint64
}

// ParseFlags reads the configuration from the environment and args and
// validates it.
func (m *Main) ParseFlags(args []string) error {
	c, err := parseConfig(args, m.Stdout)
	if err != nil {
		return err
	}
	m.LogFormat = c.LogFormat
	m.AutoGoMemLimit = c.AutoGoMemLimit
	m.GCHeadroom = uint64(c.GCHeadroomBytes)
	m.Config, m.Level, err = c.proxyConfig()
	return err
}

// Run serves until ctx is done.
func (m *Main) Run(ctx context.Context) error {
	h, err := newLogHandler(m.LogFormat, m.Stderr, m.Level)
	if err != nil {
		return err
	}
	m.Config.Logger = slog.New(h)
	if m.AutoGoMemLimit {
		setMemoryLimit(m.Config.Logger, memlimit.FromCgroup)
	}
	defer gcheadroom.Start(m.GCHeadroom, nil)()
	tp, shutdown, err := tracerProvider(ctx)
	if err != nil {
		return err
	}
	if tp != nil {
		m.Config.TracerProvider = tp
		m.Config.Logger.Info("tracing: exporting spans over OTLP", "endpoint", cmp.Or(os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT")))
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			shutdown(sctx) // flushes the spans not yet sent
		}()
	}
	return proxy.New(m.Config).Run(ctx)
}

func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}
