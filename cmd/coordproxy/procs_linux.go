package main

import (
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// becomeSubreaper makes the orphans among the supervisor's descendants its
// children, instead of init's: a command that daemonizes (forks, and its
// parent exits; or setsid) stays a descendant the supervisor can find.
func becomeSubreaper() { unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }

// signalDescendants sends sig (0: none) to every live process in the
// process group self leads or descending from self, but self, and returns
// how many there were. It reads /proc.
func signalDescendants(self int, sig syscall.Signal) int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	type proc struct {
		ppid, pgrp int
		zombie     bool
	}
	procs := make(map[int]proc, len(entries))
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid pgrp ...; comm may hold spaces and ')'.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 3 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		pgrp, _ := strconv.Atoi(f[2])
		procs[pid] = proc{ppid: ppid, pgrp: pgrp, zombie: f[0] == "Z" || f[0] == "X"}
	}
	descends := func(pid int) bool {
		for range 64 { // no deeper than this; and no loop
			p, ok := procs[pid]
			if !ok || p.ppid <= 1 {
				return false
			}
			if p.ppid == self {
				return true
			}
			pid = p.ppid
		}
		return false
	}
	n := 0
	for pid, p := range procs {
		if pid == self || p.zombie || (p.pgrp != self && !descends(pid)) {
			continue
		}
		n++
		if sig != 0 {
			syscall.Kill(pid, sig)
		}
	}
	return n
}
