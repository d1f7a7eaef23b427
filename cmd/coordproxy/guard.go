//go:build unix

package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// guarded is a command run under the supervisor (supervise.go): the CLI's
// end of it.
type guarded struct {
	sup    *exec.Cmd
	pgid   int // the supervisor's process group: the command's
	ctl    *os.File
	result chan guardResult // one, when the supervisor is done
	tty    bool             // the command's group took the terminal
}

// guardResult is how the guarded command ended.
type guardResult struct {
	code     int  // its exit code (128+n for signal n)
	deadline bool // the supervisor stopped it at the deadline
	died     bool // the supervisor died without a word
}

// startGuarded starts command under a supervisor that stops it, and every
// process it starts, at deadline (on clock.Now's clock) less grace with
// SIGTERM and at deadline with SIGKILL, unless setDeadline moves the
// deadline, and at once if this process dies.
func startGuarded(command, env []string, stdin io.Reader, stdout, stderr io.Writer, grace, deadline time.Duration) (*guarded, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	ctlR, ctlW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	repR, repW, err := os.Pipe()
	if err != nil {
		ctlR.Close()
		ctlW.Close()
		return nil, err
	}
	args := append([]string{superviseArg, grace.String(), strconv.FormatInt(int64(deadline), 10), "--"}, command...)
	c := exec.Command(self, args...)
	c.Stdin, c.Stdout, c.Stderr, c.Env = stdin, stdout, stderr, env
	c.ExtraFiles = []*os.File{ctlR, repW} // fds 3 and 4
	g := &guarded{sup: c, ctl: ctlW, result: make(chan guardResult, 1)}
	// Its own process group, so that the command and what it starts can be
	// signalled together; in the terminal's foreground if this process is
	// there, so that an interactive command reads the terminal and gets
	// its Ctrl-C.
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if f, ok := stdin.(*os.File); ok && isTerminal(f) {
		if pg, err := unix.IoctlGetInt(int(f.Fd()), unix.TIOCGPGRP); err == nil && pg == syscall.Getpgrp() {
			c.SysProcAttr = &syscall.SysProcAttr{Foreground: true, Ctty: 0}
			g.tty = true
		}
	}
	err = c.Start()
	ctlR.Close()
	repW.Close()
	if err != nil {
		ctlW.Close()
		repR.Close()
		return nil, err
	}
	g.pgid = c.Process.Pid
	if g.tty {
		// Background now: writing to the terminal or taking it back must
		// not stop this process (set after the start: an ignored signal
		// would stay ignored in the command).
		signal.Ignore(syscall.SIGTTOU)
	}
	go g.read(repR)
	return g, nil
}

// read takes the supervisor's reports, then its exit.
func (g *guarded) read(rep *os.File) {
	var r guardResult
	reported := false
	sc := bufio.NewScanner(rep)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) >= 2 && f[0] == "exit":
			r.code, _ = strconv.Atoi(f[1])
			r.deadline = len(f) == 3 && f[2] == "deadline"
			reported = true
		case len(f) == 1 && f[0] == "deadline":
			r.deadline, reported = true, true
		}
	}
	rep.Close()
	g.sup.Wait()
	if !reported {
		// Killed itself, or not a word: whatever it ran must not run on.
		r.died = true
		syscall.Kill(-g.pgid, syscall.SIGKILL)
	}
	g.result <- r
}

// setDeadline moves the deadline later.
func (g *guarded) setDeadline(d time.Duration) { fmt.Fprintf(g.ctl, "d %d\n", int64(d)) }

// signal passes sig on to the command's process group.
func (g *guarded) signal(sig syscall.Signal) { fmt.Fprintf(g.ctl, "s %d\n", int(sig)) }

// kill has the supervisor stop the command and everything it started now,
// as at the deadline.
func (g *guarded) kill() { fmt.Fprintln(g.ctl, "k") }

// killGroup SIGKILLs the command's process group, the supervisor with it:
// for a supervisor that did not act on kill (paused with its group). What
// left the group is then left to the supervisor, which is gone.
func (g *guarded) killGroup() { syscall.Kill(-g.pgid, syscall.SIGKILL) }

// close ends the supervision (what is left is killed) and gives the
// terminal back.
func (g *guarded) close() {
	g.ctl.Close()
	if g.tty {
		unix.IoctlSetPointerInt(0, unix.TIOCSPGRP, syscall.Getpgrp())
		signal.Reset(syscall.SIGTTOU)
	}
}
