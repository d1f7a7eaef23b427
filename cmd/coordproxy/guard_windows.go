package main

import (
	"errors"
	"io"
	"syscall"
	"time"
)

// On Windows there is no supervisor (process groups, subreapers and the
// signals it relies on are Unix's): a command cannot be run under a lock.

type guarded struct{ result chan guardResult }

type guardResult struct {
	code           int
	deadline, died bool
}

func startGuarded(command, env []string, stdin io.Reader, stdout, stderr io.Writer, grace, deadline time.Duration) (*guarded, error) {
	return nil, errors.New("running a command under a lock or leadership needs a Unix system; without CMD, the lock is held until the process is stopped")
}

func (g *guarded) setDeadline(time.Duration) {}
func (g *guarded) signal(syscall.Signal)     {}
func (g *guarded) kill()                     {}
func (g *guarded) killGroup()                {}
func (g *guarded) close()                    {}

const superviseArg = "__supervise"

func supervise(args []string) int { return 2 }
