package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coordproxy/coordproxy/client"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
)

const electUsage = `Usage: coordproxy elect [flags] NAME [VALUE]

With VALUE, campaigns through coordproxy to lead the election NAME (the
election of etcd's Election service, concurrency.Election and etcdctl elect
of that name) with VALUE, and leads, with a lease kept alive through a
coordproxy session, until SIGINT or SIGTERM; then it resigns. Killed, it
leads no more within a second: the proxy revokes the session's lease a
window (750 ms) after its last heartbeat. Without VALUE it only observes.

Either way it prints every change of NAME's leadership on stdout, a line
each: the time, the etcd revision of the change, and what changed:
  15:04:05.000 rev 42 current   NAME/694d7a1b2c3d4e5f lease 694d7a1b2c3d4e5f "value"
  15:04:07.120 rev 57 no-leader
  15:04:07.121 rev 58 elected   NAME/... lease ... "value"
  15:04:09.500 rev 61 proclaimed NAME/... lease ... "new value"
Progress of the campaign goes to stderr.

Exit codes: 0 after SIGINT or SIGTERM; 1 when the campaign fails or the
lease is lost (leadership with it); 2 on bad usage.

Flags:`

// electCmd is `coordproxy elect`: see electUsage. It returns the exit code.
func electCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("coordproxy elect", flag.ContinueOnError)
	var cf cliFlags
	cf.register(fs)
	if code, done := parseCLI(fs, electUsage, args, stdout, stderr); done {
		return code
	}
	rest := fs.Args()
	if len(rest) < 1 || len(rest) > 2 {
		return cliUsageError(stderr, fs.Name(), fmt.Sprintf("want NAME [VALUE], got %d arguments", len(rest)))
	}
	name := rest[0]
	if name == "" {
		return cliUsageError(stderr, fs.Name(), "the election NAME must not be empty")
	}
	if err := cf.check(); err != nil {
		return cliUsageError(stderr, fs.Name(), err.Error())
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "coordproxy elect: "+format+"\n", a...)
		return 1
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cli, err := cf.dial(ctx)
	if err != nil {
		return fail("%s", oneLine(err))
	}
	defer cli.Close()
	sess, err := cf.session(cli)
	if err != nil {
		return fail("lease: %s", oneLine(err))
	}
	defer sess.Close()
	e := client.NewElection(sess, name)

	octx, endObserve := context.WithCancel(ctx)
	var printing sync.WaitGroup
	printing.Go(func() {
		for ev := range e.Observe(octx) {
			fmt.Fprintln(stdout, formatChange(ev))
		}
	})
	defer func() { endObserve(); printing.Wait() }()

	campaign := make(chan error, 1)
	if len(rest) == 2 {
		value := rest[1]
		fmt.Fprintf(stderr, "coordproxy elect: campaigning for %s with %q (lease %x)\n", name, value, sess.Lease())
		started := time.Now()
		go func() {
			err := e.Campaign(ctx, value)
			if err == nil {
				fmt.Fprintf(stderr, "coordproxy elect: leading %s (key %s) after %s\n", name, e.Key(), since(started))
			}
			campaign <- err
		}()
	}
	for {
		select {
		case <-ctx.Done():
			if e.Key() != "" {
				rctx, cancel := context.WithTimeout(context.Background(), cf.dialTimeout)
				err := e.Resign(rctx)
				cancel()
				if err != nil {
					return fail("resign: %s", oneLine(err))
				}
				fmt.Fprintf(stderr, "coordproxy elect: resigned %s\n", name)
			}
			return 0
		case err := <-campaign:
			if err != nil && !errors.Is(err, context.Canceled) && ctx.Err() == nil {
				return fail("campaign for %s: %s", name, oneLine(err))
			}
		case <-sess.Done():
			if len(rest) == 2 {
				return fail("lost the lease of the candidacy for %s (coordproxy or etcd unreachable for longer than --ttl)", name)
			}
			return fail("lost the lease")
		}
	}
}

// formatChange is one line of elect's output.
func formatChange(ev *coordproxyv1.ObserveResponse) string {
	event := strings.ToLower(strings.TrimPrefix(ev.Event.String(), "EVENT_"))
	event = strings.ReplaceAll(event, "_", "-")
	line := fmt.Sprintf("%s rev %d %-10s", time.Now().Format("15:04:05.000"), ev.Revision, event)
	if l := ev.Leader; l != nil {
		line += fmt.Sprintf(" %s lease %x %q", l.Key, l.Lease, l.Value)
	} else if ev.Event == coordproxyv1.ObserveResponse_EVENT_CURRENT {
		line += " (no leader)"
	}
	return strings.TrimRight(line, " ")
}
