package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// cliRun is one run of a client subcommand of the built binary.
type cliRun struct {
	cmd            *exec.Cmd
	stdout, stderr *proxytest.LockedBuffer
	done           chan struct{}
	code           int
}

// startCLI starts `coordproxy args...` against the proxy at addr.
func startCLI(t *testing.T, addr string, args ...string) *cliRun {
	t.Helper()
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	r := &cliRun{stdout: &proxytest.LockedBuffer{}, stderr: &proxytest.LockedBuffer{}, done: make(chan struct{})}
	r.cmd = exec.Command(bin, args...)
	r.cmd.Env = append(os.Environ(), "COORDPROXY_ADDR="+addr)
	r.cmd.Stdout, r.cmd.Stderr = r.stdout, r.stderr
	r.cmd.Dir = t.TempDir()
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(r.done)
		r.cmd.Wait()
		r.code = r.cmd.ProcessState.ExitCode()
		if ws, ok := r.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			r.code = 128 + int(ws.Signal())
		}
	}()
	t.Cleanup(func() {
		select {
		case <-r.done:
		default:
			r.cmd.Process.Kill()
			<-r.done
		}
	})
	return r
}

// wait returns the exit code.
func (r *cliRun) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-r.done:
		return r.code
	case <-time.After(60 * time.Second):
		t.Fatalf("%v did not exit\nstdout:\n%s\nstderr:\n%s", r.cmd.Args, r.stdout, r.stderr)
		return -1
	}
}

func (r *cliRun) waitOutput(t *testing.T, what string, in *proxytest.LockedBuffer) {
	t.Helper()
	proxytest.WaitFor(t, 60*time.Second, func() (bool, string) {
		return strings.Contains(in.String(), what), fmt.Sprintf("%q in the output of %v\nstdout:\n%s\nstderr:\n%s", what, r.cmd.Args, r.stdout, r.stderr)
	})
}

func runCLI(t *testing.T, addr string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	r := startCLI(t, addr, args...)
	code = r.wait(t)
	return code, r.stdout.String(), r.stderr.String()
}

func TestLockCommand_runsCommandHoldingTheLockAndReturnsItsExitCode(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	addr := env.Proxy.Addr().String()
	envFile := filepath.Join(t.TempDir(), "env")
	code, _, stderr := runCLI(t, addr, "lock", "job", "--", "sh", "-c",
		`printf '%s %s %s\n' "$COORDPROXY_LOCK_KEY" "$COORDPROXY_FENCING_TOKEN" "$COORDPROXY_LEASE" > `+envFile+`; exit 7`)
	if code != 7 {
		t.Fatalf("exit %d, want CMD's 7\n%s", code, stderr)
	}
	b, err := os.ReadFile(envFile)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	if len(f) != 3 || !strings.HasPrefix(f[0], "job/") || strings.TrimPrefix(f[0], "job/") != f[2] {
		t.Fatalf("CMD's environment: %q", b)
	}
	if token, err := strconv.ParseInt(f[1], 10, 64); err != nil || token <= 0 {
		t.Fatalf("fencing token %q", f[1])
	}
	if keys := env.Keys(t, "job/"); len(keys) != 0 {
		t.Fatalf("keys left after CMD exited: %v", keys)
	}
	// The lease was revoked: nothing of the run stays in etcd.
	lease, _ := strconv.ParseInt(f[2], 16, 64)
	ttl, err := env.KV.TimeToLive(proxytest.Ctx(t), clientv3.LeaseID(lease))
	if err != nil || ttl.TTL != -1 {
		t.Fatalf("lease %x after the run: %v, %v; want it revoked", lease, ttl, err)
	}
}

// Processes of the command and a concurrency.Mutex user on one etcd take
// turns: the critical sections (a shell script that notes any overlap in a
// file) never overlap.
func TestLockCommand_excludesOtherProcessesAndConcurrencyMutex(t *testing.T) {
	const procs, rounds = 4, 3
	env := proxytest.New(t, proxy.Config{})
	addr := env.Proxy.Addr().String()
	dir := t.TempDir()
	inside, overlaps, count := filepath.Join(dir, "inside"), filepath.Join(dir, "overlaps"), filepath.Join(dir, "count")
	script := fmt.Sprintf(`if [ -e %[1]s ]; then echo x >> %[2]s; fi; touch %[1]s; echo 1 >> %[3]s; sleep 0.05; rm -f %[1]s`, inside, overlaps, count)

	var wg sync.WaitGroup
	errc := make(chan error, procs+1)
	for range procs {
		wg.Go(func() {
			for range rounds {
				r := startCLI(t, addr, "lock", "turns", "--", "sh", "-c", script)
				if code := r.wait(t); code != 0 {
					errc <- fmt.Errorf("exit %d: %s", code, r.stderr)
					return
				}
			}
		})
	}
	wg.Go(func() {
		s, err := concurrency.NewSession(env.KV, concurrency.WithTTL(30))
		if err != nil {
			errc <- err
			return
		}
		defer s.Close()
		m := concurrency.NewMutex(s, "turns")
		for range rounds {
			ctx := proxytest.Ctx(t)
			if err := m.Lock(ctx); err != nil {
				errc <- err
				return
			}
			out, err := exec.Command("sh", "-c", script).CombinedOutput()
			if err == nil {
				err = m.Unlock(ctx)
			}
			if err != nil {
				errc <- fmt.Errorf("%w: %s", err, out)
				return
			}
		}
	})
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(overlaps); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("critical sections overlapped: %q %v", b, err)
	}
	b, err := os.ReadFile(count)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), "1"); n != (procs+1)*rounds {
		t.Fatalf("%d critical sections ran, want %d", n, (procs+1)*rounds)
	}
}

func TestLockCommand_tryWaitingAndSignals(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	addr := env.Proxy.Addr().String()
	ctx := proxytest.Ctx(t)

	// Without CMD: prints the key and holds until SIGTERM.
	holder := startCLI(t, addr, "lock", "sig")
	holder.waitOutput(t, "sig/", holder.stdout)
	key := strings.TrimSpace(holder.stdout.String())

	t.Run("try names the holder and leaves nothing", func(t *testing.T) {
		code, _, stderr := runCLI(t, addr, "lock", "--try", "sig", "--", "true")
		if code != 3 || !strings.Contains(stderr, key) {
			t.Fatalf("exit %d, stderr %q; want 3 naming %s", code, stderr, key)
		}
		if keys := env.Keys(t, "sig/"); len(keys) != 1 {
			t.Fatalf("keys %v, want only the holder's", keys)
		}
	})

	t.Run("a waiter shows the holder and leaves on SIGTERM", func(t *testing.T) {
		waiter := startCLI(t, addr, "lock", "sig", "--", "true")
		env.WaitKeys(t, "sig/", 2)
		waiter.waitOutput(t, "held by "+key, waiter.stderr)
		waiter.cmd.Process.Signal(syscall.SIGTERM)
		if code := waiter.wait(t); code != 128+int(syscall.SIGTERM) {
			t.Fatalf("waiter exit %d, want %d\n%s", code, 128+int(syscall.SIGTERM), waiter.stderr)
		}
		env.WaitKeys(t, "sig/", 1)
	})

	t.Run("SIGTERM goes to CMD, then the lock is released", func(t *testing.T) {
		holder.cmd.Process.Signal(syscall.SIGTERM)
		if code := holder.wait(t); code != 0 {
			t.Fatalf("holder exit %d\n%s", code, holder.stderr)
		}
		marker := filepath.Join(t.TempDir(), "got-term")
		r := startCLI(t, addr, "lock", "sig", "--", "sh", "-c",
			`trap 'echo term > `+marker+`; exit 5' TERM; echo ready; while :; do sleep 0.1; done`)
		r.waitOutput(t, "ready", r.stdout)
		r.cmd.Process.Signal(syscall.SIGTERM)
		if code := r.wait(t); code != 5 {
			t.Fatalf("exit %d, want CMD's 5 after its TERM trap\n%s", code, r.stderr)
		}
		if _, err := os.Stat(marker); err != nil {
			t.Fatalf("CMD did not get SIGTERM: %v", err)
		}
		if keys := env.Keys(t, "sig/"); len(keys) != 0 {
			t.Fatalf("keys left: %v", keys)
		}
	})

	t.Run("a lost lease stops CMD", func(t *testing.T) {
		// A short TTL: the revoke is learned at the next keep-alive, a
		// third of it later.
		r := startCLI(t, addr, "lock", "--ttl", "3", "sig", "--", "sh", "-c",
			`echo "$COORDPROXY_LEASE"; trap 'exit 0' TERM; while :; do sleep 0.1; done`)
		r.waitOutput(t, "\n", r.stdout)
		lease, err := strconv.ParseInt(strings.TrimSpace(r.stdout.String()), 16, 64)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := env.KV.Revoke(ctx, clientv3.LeaseID(lease)); err != nil {
			t.Fatal(err)
		}
		if code := r.wait(t); code != 1 || !strings.Contains(r.stderr.String(), "lost") {
			t.Fatalf("exit %d, stderr %q; want 1 saying the lock was lost", code, r.stderr)
		}
	})
}

func TestClientCommands_badUsageExitsTwo(t *testing.T) {
	for _, args := range [][]string{
		{"lock"},
		{"lock", "--ttl", "0", "x"},
		{"lock", "--cert", "c.pem", "x"},
		{"elect"},
		{"elect", "a", "b", "c"},
		{"describe"},
		{"describe", "--election", "--semaphore", "x"},
		{"lock", "--no-such-flag", "x"},
		{"lock", "--window", "50ms", "x"},
		{"lock", "--window", "1s", "--kill-grace", "501ms", "x"},
		{"lock", "--lock-delay", "2m", "x"},
		{"elect", "--kill-grace", "-1s", "x", "v"},
		{"elect", "x", "--", "true"},
		{"elect", "x", "v", "--"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(args, &stdout, &stderr); code != 2 || strings.Count(stderr.String(), "\n") != 1 {
				t.Fatalf("exit %d, stderr %q; want 2 with one line", code, stderr.String())
			}
		})
	}
}

func TestClientCommands_failWithoutAProxy(t *testing.T) {
	addr := proxytest.FreeAddr(t)
	for _, args := range [][]string{{"lock", "--dial-timeout", "1s", "x", "--", "true"}, {"describe", "--dial-timeout", "1s", "x"}} {
		code, _, stderr := runCLI(t, addr, args...)
		if code != 1 || !strings.Contains(stderr, "no coordproxy answers at "+addr) {
			t.Fatalf("%v: exit %d, stderr %q", args, code, stderr)
		}
	}
}

func TestDescribeCommand_printsHolderAndWaitersAsTextAndJSON(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	addr := env.Proxy.Addr().String()
	holder := startCLI(t, addr, "lock", "--ttl", "20", "d")
	holder.waitOutput(t, "d/", holder.stdout)
	key := strings.TrimSpace(holder.stdout.String())
	waiter := startCLI(t, addr, "lock", "d", "--", "true")
	env.WaitKeys(t, "d/", 2)

	code, out, stderr := runCLI(t, addr, "describe", "d")
	if code != 0 || !strings.Contains(out, "holder: "+key) || !strings.Contains(out, "waiting: 1\n  1. d/") || !strings.Contains(out, "of 20s") {
		t.Fatalf("exit %d\n%s%s", code, out, stderr)
	}
	code, out, stderr = runCLI(t, addr, "describe", "--json", "d")
	var d struct {
		Holder struct {
			Key        []byte
			GrantedTTL string `json:"granted_ttl"`
		}
		Waiting string
	}
	if err := json.Unmarshal([]byte(out), &d); code != 0 || err != nil || string(d.Holder.Key) != key || d.Waiting != "1" || d.Holder.GrantedTTL != "20" {
		t.Fatalf("exit %d, %v: %+v\n%s%s", code, err, d, out, stderr)
	}
	holder.cmd.Process.Signal(syscall.SIGINT)
	if code := holder.wait(t); code != 0 {
		t.Fatalf("holder exit %d", code)
	}
	if code := waiter.wait(t); code != 0 {
		t.Fatalf("waiter exit %d: %s", code, waiter.stderr)
	}
}

func TestElectCommand_campaignsLeadsResignsAndPrintsChanges(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	addr := env.Proxy.Addr().String()

	watcher := startCLI(t, addr, "elect", "svc")
	watcher.waitOutput(t, "current    (no leader)", watcher.stdout)

	a := startCLI(t, addr, "elect", "svc", "node-a")
	a.waitOutput(t, "leading svc", a.stderr)
	watcher.waitOutput(t, `elected    svc/`, watcher.stdout)
	b := startCLI(t, addr, "elect", "svc", "node-b")
	env.WaitKeys(t, "svc/", 2)
	b.waitOutput(t, `"node-a"`, b.stdout) // b sees who leads while it waits

	code, out, stderr := runCLI(t, addr, "describe", "--election", "svc")
	if code != 0 || !strings.Contains(out, `value "node-a"`) || !strings.Contains(out, "candidates: 1\n  1. svc/") {
		t.Fatalf("describe --election: exit %d\n%s%s", code, out, stderr)
	}

	a.cmd.Process.Signal(syscall.SIGTERM)
	if code := a.wait(t); code != 0 || !strings.Contains(a.stderr.String(), "resigned svc") {
		t.Fatalf("a: exit %d\n%s", code, a.stderr)
	}
	b.waitOutput(t, "leading svc", b.stderr)
	watcher.waitOutput(t, `"node-b"`, watcher.stdout)
	b.cmd.Process.Signal(syscall.SIGINT)
	if code := b.wait(t); code != 0 {
		t.Fatalf("b: exit %d\n%s", code, b.stderr)
	}
	watcher.waitOutput(t, "no-leader", watcher.stdout)
	watcher.cmd.Process.Signal(syscall.SIGINT)
	if code := watcher.wait(t); code != 0 {
		t.Fatalf("watcher: exit %d\n%s", code, watcher.stderr)
	}
	// Every line has a time, the revision and the event, in revision order.
	var last int64
	for _, l := range strings.Split(strings.TrimSpace(watcher.stdout.String()), "\n") {
		f := strings.Fields(l)
		rev, err := strconv.ParseInt(f[2], 10, 64)
		if len(f) < 4 || f[1] != "rev" || err != nil || rev < last {
			t.Fatalf("line %q of\n%s", l, watcher.stdout)
		}
		last = rev
	}
	if keys := env.Keys(t, "svc/"); len(keys) != 0 {
		t.Fatalf("keys left: %v", keys)
	}
}
