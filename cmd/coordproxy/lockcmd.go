package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
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
kept by a coordproxy session, while CMD runs. CMD gets the lock in its
environment:
  COORDPROXY_LOCK_KEY        the ownership key
  COORDPROXY_FENCING_TOKEN   the key's create revision: pass it with writes
                             so that a resource can refuse an older holder
  COORDPROXY_LEASE           the lease, in hex
The lock is released when CMD and every process it started have exited, and
the exit code is CMD's. SIGINT, SIGTERM and SIGHUP are passed on to CMD's
process group; from a terminal, CMD is in the foreground and gets Ctrl-C.

No process outlives the lock. The session heartbeats; coordproxy releases
the lock --window (750ms) after the last heartbeat it received, and this
command knows from its own clock until when nobody else can hold it. If the
session is not renewed in time (coordproxy or the network to it gone, this
process paused), CMD and every process it started get SIGTERM --kill-grace
ahead of that time and SIGKILL at it — before anyone else can hold the lock.
If this process is killed, they are killed at once (a small supervisor
process stays with them for this). A replica that stops releases nothing:
with several in --addr the session resumes through another. Processes still
running when CMD exits get SIGTERM, then SIGKILL after --kill-grace, before
the lock is released.

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
	grace := killGrace(fs)
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
	if err := checkKillGrace(*grace, cf.window); err != nil {
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
	env := append(os.Environ(),
		"COORDPROXY_LOCK_KEY="+m.Key(),
		"COORDPROXY_FENCING_TOKEN="+strconv.FormatInt(m.FencingToken(), 10),
		fmt.Sprintf("COORDPROXY_LEASE=%x", int64(sess.Lease())),
	)
	return runGuarded("lock", "the lock "+name, command, env, sess, *grace, sigs, stdin, stdout, stderr)
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
