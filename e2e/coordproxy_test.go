package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/proxy/proxytest"
)

// requestTimeout is the e2e proxies' --request-timeout.
const requestTimeout = 2 * time.Second

// proxyProc is one coordproxy process.
type proxyProc struct {
	t       *testing.T
	bin     string
	addr    string
	args    []string
	logPath string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// startProxies starts n coordproxy processes in front of every member of c,
// with extra flags if given.
func startProxies(t *testing.T, c *cluster, n int, extra ...string) []*proxyProc {
	t.Helper()
	return startProxiesTo(t, c.endpoints(), n, extra...)
}

// startProxiesTo starts n coordproxy processes in front of endpoints.
func startProxiesTo(t *testing.T, endpoints []string, n int, extra ...string) []*proxyProc {
	t.Helper()
	_, bin := mustBinaries(t)
	var ps []*proxyProc
	for i := range n {
		p := &proxyProc{t: t, bin: bin, addr: proxytest.FreeAddr(t), logPath: filepath.Join(t.TempDir(), "coordproxy.log")}
		_ = i
		p.args = []string{
			"--endpoints", strings.Join(endpoints, ","),
			"--listen", p.addr,
			"--request-timeout", requestTimeout.String(),
			"--dial-timeout", "2s",
			"--shutdown-timeout", "5s",
			"--log-level", "debug",
		}
		p.args = append(p.args, extra...)
		p.start()
		ps = append(ps, p)
	}
	t.Cleanup(func() {
		if t.Failed() && os.Getenv("COORDPROXY_E2E_KEEP_LOGS") != "" {
			for _, p := range ps {
				p.mu.Lock()
				if p.cmd != nil {
					p.cmd.Process.Signal(syscall.SIGQUIT)
				}
				p.mu.Unlock()
			}
			time.Sleep(time.Second)
		}
		for _, p := range ps {
			p.kill()
		}
		if t.Failed() {
			for i, p := range ps {
				if d := os.Getenv("COORDPROXY_E2E_KEEP_LOGS"); d != "" {
					os.WriteFile(filepath.Join(d, fmt.Sprintf("coordproxy-%d.log", i)), []byte(p.logText()), 0o644)
				}
				t.Logf("--- coordproxy %s log (last 3000 bytes) ---\n%s", p.addr, tail([]byte(p.logText()), 3000))
			}
		}
	})
	return ps
}

func (p *proxyProc) start() {
	p.t.Helper()
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	before := len(p.logText())
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = append(os.Environ(), "COORDPROXY_ENDPOINTS=")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(done)
	}()
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(p.logText()[before:], "serving etcd") {
		select {
		case <-done:
			p.t.Fatalf("coordproxy exited at start:\n%s", p.logText())
		default:
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("coordproxy did not start:\n%s", p.logText())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill SIGKILLs the process: no graceful stop, no cleanup.
func (p *proxyProc) kill() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// running tells whether the process has not exited.
func (p *proxyProc) running() bool {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// stop SIGTERMs the process (a graceful stop, with its drain) and waits for
// it to exit.
func (p *proxyProc) stop() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	cmd.Process.Signal(syscall.SIGTERM)
	<-done
}

func (p *proxyProc) logText() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}
