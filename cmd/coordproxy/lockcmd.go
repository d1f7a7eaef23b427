package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/coordproxy/coordproxy/client"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
)

const lockUsage = `Usage: coordproxy lock [flags] NAME [-- CMD ARGS...]

Takes the lock NAME through coordproxy (the lock of etcd's Lock service,
concurrency.Mutex and etcdctl lock of that name) and holds it, with a lease
kept alive through a coordproxy session, while CMD runs. CMD gets the lock in
its environment:
  COORDPROXY_LOCK_KEY        the ownership key
  COORDPROXY_FENCING_TOKEN   the key's create revision: pass it with writes
                             so that a resource can refuse an older holder
  COORDPROXY_LEASE           the lease, in hex
The lock is released when CMD exits, and the exit code is CMD's. SIGINT,
SIGTERM and SIGHUP are passed on to CMD (SIGINT only when stdin is not a
terminal: from a terminal, CMD gets Ctrl-C itself). If the lease is lost
while CMD runs (coordproxy or etcd unreachable for longer than --ttl), CMD
gets SIGTERM: it no longer holds the lock. If this process is killed, the
proxy revokes the lease a window (750 ms) after the session's last
heartbeat: the lock passes on within a second, not after --ttl. A replica that stops
releases nothing; with several in --addr the session resumes through
another.

Without CMD, prints the key and holds the lock until SIGINT or SIGTERM.
While waiting, stderr shows who holds the lock and since when.

Exit codes: CMD's; 0 without CMD; 1 when the lock could not be taken or was
lost; 2 on bad usage; 3 with --try when the lock is held; 128+n when
interrupted by signal n before holding.

Flags:`

// lockCmd is `coordproxy lock`: see lockUsage. It returns the exit code.
func lockCmd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("coordproxy lock", flag.ContinueOnError)
	var cf cliFlags
	cf.register(fs)
	try := fs.Bool("try", false, "fail at once (exit 3, naming the holder) if the lock is held or waited for, instead of waiting")
	if code, done := parseCLI(fs, lockUsage, args, stdout, stderr); done {
		return code
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return cliUsageError(stderr, fs.Name(), "want a lock NAME")
	}
	name, command := rest[0], rest[1:]
	if len(command) > 0 && command[0] == "--" {
		command = command[1:]
	}
	if name == "" {
		return cliUsageError(stderr, fs.Name(), "the lock NAME must not be empty")
	}
	if err := cf.check(); err != nil {
		return cliUsageError(stderr, fs.Name(), err.Error())
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "coordproxy lock: "+format+"\n", a...)
		return 1
	}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	// Until the lock is held, a signal cancels the wait (and the proxy
	// removes the waiting key); once held, signals go to CMD.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var interrupted os.Signal
	waited, watcher := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watcher)
		select {
		case s := <-sigs:
			interrupted = s
			cancel()
		case <-waited:
		}
	}()
	endWait := func() { close(waited); <-watcher }

	cli, err := cf.dial(ctx)
	if err != nil {
		return fail("%s", oneLine(err))
	}
	defer cli.Close()
	sess, err := cf.session(cli)
	if err != nil {
		return fail("lease: %s", oneLine(err))
	}
	defer sess.Close() // revokes the lease: nothing is left behind
	m := client.NewMutex(sess, name)

	started := time.Now()
	if *try {
		err = m.TryLock(ctx)
		var locked *client.LockedError
		if errors.As(err, &locked) {
			fmt.Fprintf(stderr, "coordproxy lock: %s is held by %s\n", name, describeHolder(locked.Holder))
			return 3
		}
	} else {
		stop := showWaiting(ctx, m, name, stderr)
		err = m.Lock(ctx)
		stop()
	}
	endWait()
	if err == nil && interrupted != nil {
		// Granted as the signal came: give it back.
		uctx, ucancel := context.WithTimeout(context.Background(), cf.dialTimeout)
		err = errors.Join(ctx.Err(), m.Unlock(uctx))
		ucancel()
	}
	if err != nil {
		if interrupted != nil {
			return 128 + int(interrupted.(syscall.Signal))
		}
		return fail("%s: %s", name, oneLine(err))
	}
	fmt.Fprintf(stderr, "coordproxy lock: holding %s (key %s, fencing token %d, lease %x) after %s\n",
		name, m.Key(), m.FencingToken(), sess.Lease(), since(started))
	defer func() {
		uctx, ucancel := context.WithTimeout(context.Background(), cf.dialTimeout)
		defer ucancel()
		if err := m.Unlock(uctx); err != nil {
			fmt.Fprintf(stderr, "coordproxy lock: unlock %s: %s (the lease is revoked next, which releases it)\n", m.Key(), oneLine(err))
		}
	}()

	if len(command) == 0 {
		fmt.Fprintln(stdout, m.Key())
		select {
		case <-sigs:
			return 0
		case <-sess.Done():
			return fail("lost %s: the lease ended", name)
		}
	}
	return runHolding(command, m, sess, sigs, stdin, stdout, stderr)
}

// runHolding runs command while m is held and returns its exit code.
func runHolding(command []string, m *client.Mutex, sess *client.Session, sigs chan os.Signal, stdin io.Reader, stdout, stderr io.Writer) int {
	cmd := exec.Command(command[0], command[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	cmd.Env = append(os.Environ(),
		"COORDPROXY_LOCK_KEY="+m.Key(),
		"COORDPROXY_FENCING_TOKEN="+strconv.FormatInt(m.FencingToken(), 10),
		fmt.Sprintf("COORDPROXY_LEASE=%x", int64(sess.Lease())),
	)
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(stderr, "coordproxy lock: %s\n", oneLine(err))
		return 1
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	lost := false
	sessDone := sess.Done()
	for {
		select {
		case s := <-sigs:
			if s == syscall.SIGINT && isTerminal(stdin) {
				continue // CMD, in the same foreground process group, got it too
			}
			_ = cmd.Process.Signal(s)
		case <-sessDone:
			sessDone = nil
			lost = true
			fmt.Fprintf(stderr, "coordproxy lock: lost %s: the lease ended; sending SIGTERM to %s\n", m.Key(), command[0])
			_ = cmd.Process.Signal(syscall.SIGTERM)
		case err := <-exited:
			code := exitCode(cmd, err)
			if lost && code == 0 {
				return 1
			}
			return code
		}
	}
}

// exitCode is CMD's exit code, 128+n if signal n ended it.
func exitCode(cmd *exec.Cmd, err error) int {
	if err == nil {
		return 0
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	if cmd.ProcessState != nil {
		return cmd.ProcessState.ExitCode()
	}
	return 1
}

// showWaiting shows on stderr, while Lock waits, who holds the lock and
// since when: redrawn in place on a terminal, a line per new holder
// otherwise. stop ends it.
func showWaiting(ctx context.Context, m *client.Mutex, name string, stderr io.Writer) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	tty := isTerminal(stderr)
	go func() {
		defer close(done)
		var holder string
		var seen time.Time
		t := time.NewTicker(time.Second)
		defer t.Stop()
		// The first look comes a moment after Lock is sent, so that a free
		// lock prints nothing.
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
		for {
			d, err := m.Describe(ctx)
			if err == nil && d.Holder != nil && string(d.Holder.Key) != m.Key() {
				if string(d.Holder.Key) != holder {
					holder, seen = string(d.Holder.Key), time.Now()
					if !tty {
						fmt.Fprintf(stderr, "coordproxy lock: waiting for %s: held by %s (seen from %s)\n", name, describeHolder(d.Holder), seen.Format(time.TimeOnly))
					}
				}
				if tty {
					fmt.Fprintf(stderr, "\r\033[Kwaiting for %s: held by %s for at least %s; %d waiting", name, describeHolder(d.Holder), since(seen), d.Waiting)
				}
			}
			select {
			case <-ctx.Done():
				if tty && holder != "" {
					fmt.Fprint(stderr, "\r\033[K")
				}
				return
			case <-t.C:
			}
		}
	}()
	return func() { cancel(); <-done }
}

// describeHolder says who holds, in one phrase.
func describeHolder(k *coordproxyv1.Key) string {
	if k == nil {
		return "nobody"
	}
	s := fmt.Sprintf("%s (lease %x, fencing token %d", k.Key, k.Lease, k.CreateRevision)
	if k.Ttl > 0 {
		s += fmt.Sprintf(", lease TTL %ds/%ds", k.Ttl, k.GrantedTtl)
	}
	return s + ")"
}
