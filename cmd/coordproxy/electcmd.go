package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coordproxy/coordproxy/client"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
)

const electUsage = `Usage: coordproxy elect [flags] NAME [VALUE [-- CMD ARGS...]]

With VALUE, campaigns through coordproxy to lead the election NAME (the
election of etcd's Election service, concurrency.Election and etcdctl elect
of that name) with VALUE, and leads, with a lease kept by a coordproxy
session, until SIGINT or SIGTERM; then it resigns. Killed, it leads no more
within a second: coordproxy revokes the session's lease a window (750 ms)
after its last heartbeat. Without VALUE it only observes.

Either way, without CMD, it prints every change of NAME's leadership on
stdout, a line each: the time, the etcd revision of the change, and what
changed:
  15:04:05.000 rev 42 current   NAME/694d7a1b2c3d4e5f lease 694d7a1b2c3d4e5f "value"
  15:04:07.120 rev 57 no-leader
  15:04:07.121 rev 58 elected   NAME/... lease ... "value"
  15:04:09.500 rev 61 proclaimed NAME/... lease ... "new value"
Progress of the campaign goes to stderr.

With CMD, runs CMD while leading — "run this on one node only" — and
resigns when CMD and every process it started have exited; the exit code is
CMD's. CMD gets its leadership in its environment:
  COORDPROXY_ELECTION_KEY    the leader's key
  COORDPROXY_FENCING_TOKEN   the key's create revision: pass it with writes
                             so that a resource can refuse an older leader
  COORDPROXY_LEASE           the lease, in hex
No process outlives the leadership, as with coordproxy lock: if the session
is not renewed in time, CMD and every process it started get SIGTERM
--kill-grace ahead of the session's safe-until and SIGKILL at it, before
anyone else can lead; if this process is killed, they are killed at once.
SIGINT, SIGTERM and SIGHUP are passed on to CMD's process group.

Exit codes: 0 after SIGINT or SIGTERM (without CMD); CMD's; 1 when the
campaign fails or the lease is lost (leadership with it); 2 on bad usage;
128+n when interrupted by signal n before leading (with CMD).

Flags:`

// electCmd is `coordproxy elect`: see electUsage. It returns the exit code.
func electCmd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("coordproxy elect", flag.ContinueOnError)
	var cf cliFlags
	cf.register(fs)
	grace := killGrace(fs)
	if code, done := parseCLI(fs, electUsage, args, stdout, stderr); done {
		return code
	}
	rest, command := fs.Args(), []string(nil)
	if i := slices.Index(rest, "--"); i >= 0 {
		rest, command = rest[:i], rest[i+1:]
		if len(rest) != 2 || len(command) == 0 {
			return cliUsageError(stderr, fs.Name(), "want NAME VALUE -- CMD [ARGS...] to run CMD while leading")
		}
	}
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
	if err := checkKillGrace(*grace, cf.window); err != nil {
		return cliUsageError(stderr, fs.Name(), err.Error())
	}
	if command != nil {
		return leadWhile(&cf, name, rest[1], command, *grace, stdin, stdout, stderr)
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
				return fail("lost the lease of the candidacy for %s (%s)", name, oneLine(sessionEnd(sess)))
			}
			return fail("lost the lease")
		}
	}
}

// leadWhile campaigns for name with value and runs command while leading
// (electUsage); it returns the exit code.
func leadWhile(cf *cliFlags, name, value string, command []string, grace time.Duration, stdin io.Reader, stdout, stderr io.Writer) int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "coordproxy elect: "+format+"\n", a...)
		return 1
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	// Until leading, a signal cancels the campaign (and the proxy removes
	// the candidate's key); once leading, signals go to CMD.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var interrupted os.Signal
	led, watcher := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watcher)
		select {
		case s := <-sigs:
			interrupted = s
			cancel()
		case <-led:
		}
	}()
	cli, err := cf.dial(ctx)
	if err != nil {
		close(led)
		<-watcher
		return fail("%s", oneLine(err))
	}
	defer cli.Close()
	sess, err := cf.session(cli)
	if err != nil {
		close(led)
		<-watcher
		return fail("lease: %s", oneLine(err))
	}
	defer sess.Close() // revokes the lease: nothing is left behind
	e := client.NewElection(sess, name)
	fmt.Fprintf(stderr, "coordproxy elect: campaigning for %s with %q (lease %x)\n", name, value, sess.Lease())
	started := time.Now()
	err = e.Campaign(ctx, value)
	close(led)
	<-watcher
	if err == nil && interrupted != nil {
		err = ctx.Err()
	}
	defer func() {
		if e.Key() == "" {
			return
		}
		rctx, rcancel := context.WithTimeout(context.Background(), cf.dialTimeout)
		defer rcancel()
		if err := e.Resign(rctx); err != nil {
			fmt.Fprintf(stderr, "coordproxy elect: resign %s: %s (the lease is revoked next, which ends the leadership)\n", name, oneLine(err))
		}
	}()
	if err != nil {
		if interrupted != nil {
			return 128 + int(interrupted.(syscall.Signal))
		}
		return fail("campaign for %s: %s", name, oneLine(err))
	}
	fmt.Fprintf(stderr, "coordproxy elect: leading %s (key %s, fencing token %d) after %s; running %s\n", name, e.Key(), e.Rev(), since(started), command[0])
	env := append(os.Environ(),
		"COORDPROXY_ELECTION_KEY="+e.Key(),
		"COORDPROXY_FENCING_TOKEN="+strconv.FormatInt(e.Rev(), 10),
		fmt.Sprintf("COORDPROXY_LEASE=%x", int64(sess.Lease())),
	)
	return runGuarded("elect", "the leadership of "+name, command, env, sess, grace, sigs, stdin, stdout, stderr)
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
