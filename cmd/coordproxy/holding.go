package main

import (
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/coordproxy/coordproxy/client"
	"github.com/coordproxy/coordproxy/internal/clock"
)

// killFallback is how long the CLI gives the supervisor to act on a kill
// before it SIGKILLs the command's process group itself.
const killFallback = 50 * time.Millisecond

// runGuarded runs command, under the supervisor (guard.go), while sess
// holds what (a lock, a leadership) and returns its exit code: 1 if it was
// stopped because the session was lost or not renewed in time. The
// supervisor's deadline follows the session's SafeUntil: the command and
// everything it started get SIGTERM grace ahead of it and SIGKILL at it,
// unless the session is renewed meanwhile, and SIGKILL at once if this
// process dies. Signals this process gets are passed on to the command.
func runGuarded(sub string, what string, command, env []string, sess *client.Session, grace time.Duration, sigs <-chan os.Signal, stdin io.Reader, stdout, stderr io.Writer) int {
	say := func(format string, a ...any) { fmt.Fprintf(stderr, "coordproxy "+sub+": "+format+"\n", a...) }
	g, err := startGuarded(command, env, stdin, stdout, stderr, grace, bootDeadline(sess))
	if err != nil {
		say("%s", oneLine(err))
		return 1
	}
	defer g.close()
	sessDone := sess.Done()
	var fallback <-chan time.Time
	lost := false
	for {
		select {
		case <-sess.Renewed():
			g.setDeadline(bootDeadline(sess))
		case s := <-sigs:
			if sig, ok := s.(syscall.Signal); ok {
				g.signal(sig)
			}
		case <-sessDone:
			sessDone, lost = nil, true
			say("lost %s: %s; killing %s and every process it started", what, oneLine(sessionEnd(sess)), command[0])
			g.kill()
			fallback = time.After(killFallback)
		case <-fallback:
			g.killGroup()
		case r := <-g.result:
			switch {
			case r.died:
				say("the supervisor of %s died; its process group was killed", command[0])
				return 1
			case r.deadline && !lost:
				lost = true
				say("lost %s: the session was not renewed in time (window %s; it has %s left now); %s and every process it started were stopped",
					what, sess.Window(), max(0, sess.Remaining()).Round(time.Millisecond), command[0])
			}
			if lost {
				return 1 // whatever CMD's code: it was stopped
			}
			return r.code
		}
	}
}

// bootDeadline is sess's SafeUntil on the supervisor's clock (read in an
// order that errs early).
func bootDeadline(sess *client.Session) time.Duration {
	until := sess.SafeUntil()
	return clock.Now() + time.Until(until)
}

// sessionEnd says why a session ended.
func sessionEnd(sess *client.Session) error {
	if err := sess.Err(); err != nil {
		return err
	}
	return client.ErrSessionLost
}
