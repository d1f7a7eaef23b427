package main

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/proxy/proxytest"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
)

// binDir holds the binary built for this test run.
var binDir string

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == superviseArg {
		// Run as the supervisor startGuarded starts (os.Executable).
		os.Exit(supervise(os.Args[2:]))
	}
	var err error
	if binDir, err = os.MkdirTemp("", "coordproxy-bin"); err != nil {
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(binDir)
	os.Exit(code)
}

// buildBinary builds this command once per test run.
var buildBinary = sync.OnceValues(func() (string, error) {
	bin := filepath.Join(binDir, "coordproxy")
	out, err := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", &buildError{err, string(out)}
	}
	return bin, nil
})

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return e.err.Error() + ": " + e.out }

// process is a running coordproxy binary.
type process struct {
	cmd  *exec.Cmd
	out  *syncLines
	done chan error
}

type syncLines struct {
	mu    sync.Mutex
	lines []string
}

func (s *syncLines) add(l string) {
	s.mu.Lock()
	s.lines = append(s.lines, l)
	s.mu.Unlock()
}

func (s *syncLines) text() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.lines, "\n")
}

func startBinary(t *testing.T, dir string, args ...string) *process {
	t.Helper()
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "COORDPROXY_ENDPOINTS=")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, out: &syncLines{}, done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.out.add(sc.Text())
		}
		io.Copy(io.Discard, stderr)
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *process) waitFor(t *testing.T, text string) {
	t.Helper()
	proxytest.WaitFor(t, time.Minute, func() (bool, string) {
		return strings.Contains(p.out.text(), text), "output lacks " + text + ":\n" + p.out.text()
	})
}

func (p *process) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, p.out.text())
		}
	case <-time.After(time.Minute):
		t.Fatalf("no exit after SIGTERM:\n%s", p.out.text())
	}
}

func TestDevMode_servesKeepsDataAcrossRestartAndStopsOnSIGTERM(t *testing.T) {
	dir := t.TempDir()
	addr := proxytest.FreeAddr(t)
	p := startBinary(t, dir, "--listen", addr)
	p.waitFor(t, "serving etcd Lock, Election, KV, Watch, Lease")
	dataDir := filepath.Join(dir, "coordproxy.etcd")
	for _, want := range []string{"dev mode: started embedded etcd", "url=http://127.0.0.1:", "data_dir=" + dataDir, "listen=" + addr} {
		if !strings.Contains(p.out.text(), want) {
			t.Fatalf("output lacks %q:\n%s", want, p.out.text())
		}
	}

	ctx := proxytest.Ctx(t)
	conn := proxytest.Dial(t, addr)
	lease, err := pb.NewLeaseClient(conn).LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 600})
	if err != nil {
		t.Fatal(err)
	}
	lc := v3lockpb.NewLockClient(conn)
	l, err := lc.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("dev-lock"), Lease: lease.ID})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lc.Unlock(ctx, &v3lockpb.UnlockRequest{Key: l.Key}); err != nil {
		t.Fatal(err)
	}
	ec := epb.NewElectionClient(conn)
	if _, err := ec.Campaign(ctx, &epb.CampaignRequest{Name: []byte("dev-election"), Lease: lease.ID, Value: []byte("kept")}); err != nil {
		t.Fatal(err)
	}
	p.stop(t)
	for _, want := range []string{"stopping", "embedded etcd stopped", "stopped"} {
		if !strings.Contains(p.out.text(), want) {
			t.Fatalf("output lacks %q:\n%s", want, p.out.text())
		}
	}

	p = startBinary(t, dir, "--listen", addr)
	p.waitFor(t, "serving etcd Lock, Election, KV, Watch, Lease")
	conn = proxytest.Dial(t, addr)
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := epb.NewElectionClient(conn).Leader(cctx, &epb.LeaderRequest{Name: []byte("dev-election")})
	if err != nil || string(resp.Kv.Value) != "kept" {
		t.Fatalf("after restart: leader %v, %v; want the value from before", resp, err)
	}
	p.stop(t)
}
