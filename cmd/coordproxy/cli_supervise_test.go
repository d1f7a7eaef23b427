package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
)

// alive tells whether process pid exists (and is not a zombie).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] != "Z"
}

// pidsIn waits for file to list n pids, one a line.
func pidsIn(t *testing.T, file string, n int) []int {
	t.Helper()
	var pids []int
	proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
		b, _ := os.ReadFile(file)
		pids = pids[:0]
		for _, f := range strings.Fields(string(b)) {
			if p, err := strconv.Atoi(f); err == nil {
				pids = append(pids, p)
			}
		}
		return len(pids) == n, fmt.Sprintf("%d pids in %s, want %d", len(pids), file, n)
	})
	return pids
}

// The command a lock runs, a child of it, and a daemon it started (which
// left the process group for a session of its own, and whose parent exited
// at once) all die when `coordproxy lock` alone is SIGKILLed — before its
// lease is revoked.
func TestLockCommand_itsCommandDiesWithIt(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	addr := env.Proxy.Addr().String()
	dir := t.TempDir()
	pids, daemonize := filepath.Join(dir, "pids"), filepath.Join(dir, "daemonize")
	if err := os.WriteFile(daemonize, []byte("#!/bin/sh\nsetsid sh -c 'echo $$ >> "+pids+"; exec sleep 600' </dev/null >/dev/null 2>&1 &\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	r := startCLI(t, addr, "lock", "--ttl", "30", "die", "--", "sh", "-c",
		`echo $$ >> `+pids+`; sleep 600 & echo $! >> `+pids+`; `+daemonize+`; wait`)
	procs := pidsIn(t, pids, 3)
	for _, p := range procs {
		t.Cleanup(func() { syscall.Kill(p, syscall.SIGKILL) })
	}
	env.WaitKeys(t, "die/", 1)
	r.cmd.Process.Signal(syscall.SIGKILL) // the CLI only
	proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
		for _, p := range procs {
			if alive(p) {
				return false, fmt.Sprintf("process %d of the command outlived `coordproxy lock`", p)
			}
		}
		return true, ""
	})
	// They were gone before the lease: the lock was still held.
	if keys := env.Keys(t, "die/"); len(keys) != 1 {
		t.Fatalf("keys %v: the lock passed on before its command was killed", keys)
	}
}

// When the command exits, what it left running in the background gets
// SIGTERM and is gone before the lock is released.
func TestLockCommand_whatTheCommandLeftRunningStopsBeforeTheRelease(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	addr := env.Proxy.Addr().String()
	dir := t.TempDir()
	pids, termed := filepath.Join(dir, "pids"), filepath.Join(dir, "termed")
	code, _, stderr := runCLI(t, addr, "lock", "left", "--", "sh", "-c",
		`sh -c 'trap "echo x > `+termed+`; exit 0" TERM; while :; do sleep 0.05; done' & echo $! > `+pids+`; exit 4`)
	if code != 4 {
		t.Fatalf("exit %d, want CMD's 4\n%s", code, stderr)
	}
	left := pidsIn(t, pids, 1)[0]
	if alive(left) {
		syscall.Kill(left, syscall.SIGKILL)
		t.Fatal("the background process outlived the lock")
	}
	if _, err := os.Stat(termed); err != nil {
		t.Fatalf("the background process did not get SIGTERM first: %v", err)
	}
	if keys := env.Keys(t, "left/"); len(keys) != 0 {
		t.Fatalf("keys left: %v", keys)
	}
}

// `coordproxy elect NAME VALUE -- CMD` runs CMD only while leading: a second
// one waits, runs its CMD once the first's has exited and resigned, and
// both exit with their CMD's code.
func TestElectCommand_runsItsCommandWhileLeading(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	addr := env.Proxy.Addr().String()
	dir := t.TempDir()
	release, log := filepath.Join(dir, "release"), filepath.Join(dir, "log")
	script := func(who string, code int) string {
		return fmt.Sprintf(`echo "%[1]s start $COORDPROXY_ELECTION_KEY $COORDPROXY_FENCING_TOKEN" >> %[2]s; while [ ! -e %[3]s ]; do sleep 0.05; done; echo "%[1]s end" >> %[2]s; exit %[4]d`, who, log, release, code)
	}
	a := startCLI(t, addr, "elect", "job", "node-a", "--", "sh", "-c", script("a", 0))
	a.waitOutput(t, "leading job", a.stderr)
	b := startCLI(t, addr, "elect", "job", "node-b", "--", "sh", "-c", script("b", 6))
	env.WaitKeys(t, "job/", 2)
	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if code := a.wait(t); code != 0 {
		t.Fatalf("a exit %d\n%s", code, a.stderr)
	}
	if code := b.wait(t); code != 6 {
		t.Fatalf("b exit %d, want its CMD's 6\n%s", code, b.stderr)
	}
	b2, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b2)), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "a start job/") || lines[1] != "a end" || !strings.HasPrefix(lines[2], "b start job/") || lines[3] != "b end" {
		t.Fatalf("the commands' log:\n%s\nwant a's run, then b's", b2)
	}
	if keys := env.Keys(t, "job/"); len(keys) != 0 {
		t.Fatalf("keys left: %v", keys)
	}
}
