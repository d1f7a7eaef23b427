//go:build unix

package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/coordproxy/coordproxy/internal/clock"
	"golang.org/x/sys/unix"
)

// The supervisor: a small process between `coordproxy lock` (or `elect`)
// and its command, so that no process outlives the lock.
//
// The CLI keeps the session; the supervisor keeps the deadline. The CLI
// starts it as the leader of a new process group and passes it the
// session's safe-until (on the boot-time clock both share) each time it
// moves. The supervisor starts the command in that group and, on Linux,
// becomes the "child subreaper" of everything the command starts, so that
// descendants which leave the group or lose their parent stay its
// descendants. It kills all of them:
//   - with SIGTERM at the deadline less the kill grace, and SIGKILL at the
//     deadline, unless the deadline moved: if the CLI hangs, is paused or
//     lost its session, the deadline stops moving and the command stops
//     in time by the supervisor's own clock;
//   - with SIGKILL at once when the CLI dies (SIGKILL, the OOM killer): the
//     control pipe from it reads end-of-file when the kernel closes the
//     dead process's files (this does not depend on which thread of the
//     CLI started the supervisor, as PR_SET_PDEATHSIG would);
//   - with SIGTERM, then SIGKILL after the kill grace, whatever is left
//     when the command exits: the lock is released only when they are
//     gone.
//
// It reports to the CLI on a second pipe: "pid N" when the command runs,
// "exit CODE" when it and its descendants are gone ("exit CODE deadline" if
// that came after the SIGTERM of a deadline), "deadline" when it killed them
// at the deadline.

// superviseArg is the hidden subcommand that runs the supervisor:
// coordproxy __supervise KILL_GRACE DEADLINE_NS -- CMD ARGS...
const superviseArg = "__supervise"

// The supervisor's pipes, as the CLI passes them (ExtraFiles 0 and 1).
const (
	controlFD = 3
	reportFD  = 4
)

// superviseTick: the supervisor's timers run on Go's clock, which stops
// while the machine is suspended, so it looks at the boot-time clock at
// least this often as well as when a step is due.
const superviseTick = 20 * time.Millisecond

// supervise is the supervisor's main; it returns its exit code.
func supervise(args []string) int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "coordproxy lock: supervisor: "+format+"\n", a...)
		return 2
	}
	if len(args) < 4 || args[2] != "--" {
		return fail("usage: %s KILL_GRACE DEADLINE_NS -- CMD ARGS...", superviseArg)
	}
	grace, err := time.ParseDuration(args[0])
	if err != nil {
		return fail("%v", err)
	}
	d, err := strconv.ParseInt(args[1], 10, 64)
	if err != nil {
		return fail("%v", err)
	}
	deadline := time.Duration(d)
	command := args[3:]
	// The control pipe is read by its descriptor (an *os.File of it could
	// be collected, and close it); the report pipe is written as a file.
	report := os.NewFile(reportFD, "report")
	if _, err := unix.FcntlInt(controlFD, unix.F_GETFD, 0); err != nil || report == nil {
		return fail("started without its pipes")
	}
	// Not for the command: it would hold the CLI's pipes open.
	syscall.CloseOnExec(controlFD)
	syscall.CloseOnExec(reportFD)

	// Signals to the group (a terminal's Ctrl-C, the CLI passing one on)
	// are for the command; the supervisor stays to the end.
	signal.Notify(make(chan os.Signal, 8), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	becomeSubreaper()

	path, err := exec.LookPath(command[0])
	if err != nil {
		fmt.Fprintf(os.Stderr, "coordproxy lock: %v\n", err)
		fmt.Fprintln(report, "exit 127")
		return 1
	}
	p, err := os.StartProcess(path, command, &os.ProcAttr{Files: []*os.File{os.Stdin, os.Stdout, os.Stderr}, Env: os.Environ()})
	if err != nil {
		fmt.Fprintf(os.Stderr, "coordproxy lock: %v\n", err)
		fmt.Fprintln(report, "exit 127")
		return 1
	}
	pid := p.Pid
	p.Release() // reaped below, with every orphan that comes to us
	fmt.Fprintf(report, "pid %d\n", pid)

	exited := make(chan int, 1)
	go reap(pid, exited)
	ctl := &controlReader{fd: controlFD}
	self := os.Getpid()
	termed := false
	for {
		// What the CLI said first, up to the next step: a deadline is
		// acted on only once every update already sent has been read (a
		// supervisor that started slowly must not act on the deadline it
		// was started with while newer ones wait in the pipe).
		wait := min(deadline-clock.Now(), superviseTick)
		if !termed {
			wait = min(deadline-grace-clock.Now(), superviseTick)
		}
		msgs, open := ctl.read(max(wait, 0))
		if !open {
			// The CLI is gone: nothing may outlive it.
			killAll(self, syscall.SIGKILL)
			return 1
		}
		for _, m := range msgs {
			switch f := strings.Fields(m); {
			case len(f) == 2 && f[0] == "d":
				if v, err := strconv.ParseInt(f[1], 10, 64); err == nil && time.Duration(v) > deadline {
					deadline = time.Duration(v)
				}
			case len(f) == 2 && f[0] == "s":
				if n, err := strconv.Atoi(f[1]); err == nil {
					syscall.Kill(-self, syscall.Signal(n))
				}
			case len(f) == 1 && f[0] == "k":
				deadline = 0
			}
		}
		select {
		case code := <-exited:
			// The command is done: so is everything it left behind,
			// before the lock is released.
			if descendants(self) > 0 {
				killAll(self, syscall.SIGTERM)
				until := clock.Now() + grace
				for descendants(self) > 0 && clock.Now() < until {
					time.Sleep(superviseTick)
				}
				killAll(self, syscall.SIGKILL)
			}
			if termed {
				// Stopped for want of renewal: the CLI says so.
				fmt.Fprintf(report, "exit %d deadline\n", code)
			} else {
				fmt.Fprintf(report, "exit %d\n", code)
			}
			return 0
		default:
		}
		now := clock.Now()
		if now >= deadline {
			killAll(self, syscall.SIGKILL)
			fmt.Fprintln(report, "deadline")
			<-exited
			return 1
		}
		if !termed && now >= deadline-grace {
			termed = true
			fmt.Fprintf(os.Stderr, "coordproxy: the session was not renewed in time: SIGTERM to %s and every process it started (SIGKILL in %s unless it is renewed)\n", command[0], (deadline - now).Round(time.Millisecond))
			killAll(self, syscall.SIGTERM)
		}
	}
}

// controlReader reads the CLI's lines from the control pipe in the
// supervisor's own loop, so that it knows what has been said before it
// acts.
type controlReader struct {
	fd      int
	partial []byte
}

// read waits up to wait for the pipe to have something, then reads all it
// has: whole lines, and whether the CLI still holds its end.
func (c *controlReader) read(wait time.Duration) (lines []string, open bool) {
	fds := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLIN}}
	ms := int((wait + time.Millisecond - 1) / time.Millisecond)
	for {
		n, err := unix.Poll(fds, ms)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			return nil, true
		}
		break
	}
	buf := make([]byte, 4096)
	for {
		n, err := unix.Read(c.fd, buf)
		if err == unix.EINTR {
			continue
		}
		if n <= 0 {
			return c.lines(), false // EOF: the CLI is gone
		}
		c.partial = append(c.partial, buf[:n]...)
		if n < len(buf) {
			return c.lines(), true
		}
		// More may be there: only if poll says so, without waiting.
		if p, _ := unix.Poll(fds, 0); p == 0 {
			return c.lines(), true
		}
	}
}

func (c *controlReader) lines() []string {
	var out []string
	for {
		i := bytes.IndexByte(c.partial, '\n')
		if i < 0 {
			return out
		}
		out = append(out, string(c.partial[:i]))
		c.partial = c.partial[i+1:]
	}
}

// reap waits for every child (the command, and the orphans that come to a
// subreaper) and sends the command's exit code: its own, or 128+n if
// signal n ended it.
func reap(pid int, exited chan<- int) {
	for {
		var ws syscall.WaitStatus
		wpid, err := syscall.Wait4(-1, &ws, 0, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return // no children left
		}
		if wpid != pid {
			continue
		}
		code := ws.ExitStatus()
		if ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		exited <- code
	}
}

// killAll sends sig to every process of the supervisor's group and every
// other descendant it has, but itself; with SIGKILL, again until none is
// left (one may have forked meanwhile).
func killAll(self int, sig syscall.Signal) {
	if sig != syscall.SIGKILL {
		signalDescendants(self, sig)
		return
	}
	for range 50 {
		if signalDescendants(self, sig) == 0 {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// descendants counts the processes killAll would signal.
func descendants(self int) int { return signalDescendants(self, 0) }
