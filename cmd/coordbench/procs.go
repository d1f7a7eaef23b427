package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/coordproxy/coordproxy/internal/gcheadroom"
	"github.com/coordproxy/coordproxy/proxy"
	"github.com/prometheus/procfs"
)

// coordbench runs etcd and coordproxy as child processes of its own binary
// (the hidden roles below), so that each one's memory can be read from /proc
// and neither shares a heap or scheduler with the load generator.

const (
	roleEtcd  = "__serve-etcd"
	roleProxy = "__serve-proxy"
)

// serveRole runs a child role; it returns false if args name none.
func serveRole(args []string, stdout, stderr io.Writer) (int, bool) {
	if len(args) == 0 || (args[0] != roleEtcd && args[0] != roleProxy && args[0] != roleGRPCProxy) {
		return 0, false
	}
	// A child ends when its parent does: the parent holds our stdin.
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	var err error
	switch args[0] {
	case roleEtcd:
		err = serveEtcd(ctx, args[1], stdout)
	case roleGRPCProxy:
		err = serveGRPCProxy(ctx, args[1], stdout)
	case roleProxy:
		max, _ := strconv.Atoi(args[3])
		policyFile := ""
		if len(args) > 4 {
			policyFile = args[4]
		}
		err = serveProxy(ctx, args[1], args[2], max, policyFile, stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "coordbench %s: %v\n", args[0], err)
		return 1, true
	}
	return 0, true
}

func serveEtcd(ctx context.Context, dir string, stdout io.Writer) error {
	// COORDBENCH_ETCD_LOG_LEVEL=warn shows etcd's slow-request warnings.
	// COORDBENCH_ETCD_PPROF=1: etcd's /debug/pprof, for -etcd-profile.
	e, err := proxy.StartEmbeddedEtcd(dir, proxy.EmbedOptions{LogLevel: os.Getenv("COORDBENCH_ETCD_LOG_LEVEL"),
		EnablePprof: os.Getenv("COORDBENCH_ETCD_PPROF") == "1"})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "READY %s\n", e.URL)
	<-ctx.Done()
	e.Close()
	return nil
}

func serveProxy(ctx context.Context, endpoints, cpuprofile string, maxEtcdRequests int, policyFile string, stdout io.Writer) error {
	if cpuprofile != "" {
		f, err := os.Create(cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	// Pprof: the waiters scenario reads the proxy's runtime.MemStats from
	// /debug/pprof/heap to say where its memory is.
	cfg := proxy.Config{Endpoints: strings.Split(endpoints, ","), Listen: "127.0.0.1:0", MaxEtcdRequests: maxEtcdRequests, Pprof: true, PolicyFile: policyFile}
	// COORDBENCH_PROXY_TLS=CERT,KEY,CA: serve TLS and ask for client
	// certificates signed by CA (the tenants' identities).
	if v := os.Getenv("COORDBENCH_PROXY_TLS"); v != "" {
		f := strings.Split(v, ",")
		cfg.CertFile, cfg.KeyFile, cfg.TrustedCAFile, cfg.ClientCertAuth = f[0], f[1], f[2], true
	}
	if v := os.Getenv("COORDBENCH_READ_CACHE_KEYS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return err
		}
		cfg.ReadCacheKeys = n
	}
	// As the binary does (--gc-headroom-bytes' default; -proxy-env GOGC=100
	// measures without it).
	defer gcheadroom.Start(gcheadroom.Default, nil)()
	s := proxy.New(cfg)
	if err := s.Start(ctx); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "READY %s\n", s.Addr())
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s.Shutdown(sctx)
	return nil
}

// child is a running role.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	addr  string
	done  chan struct{}
	// metrics is where the child's own /metrics is ("http://addr" unless
	// set: etcd's grpc-proxy serves its own at /proxy/metrics).
	metrics string
}

// metricsBase is the base URL of the child's own /metrics.
func (c *child) metricsBase() string {
	if c.metrics != "" {
		return c.metrics
	}
	return "http://" + c.addr
}

// startChild starts a role of this binary with env added to its environment.
func startChild(env []string, args ...string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "READY "); ok {
				ready <- a
			}
		}
		cmd.Wait()
		close(c.done)
	}()
	select {
	case c.addr = <-ready:
		return c, nil
	case <-c.done:
		return nil, fmt.Errorf("%s exited before it was ready", args[0])
	case <-time.After(time.Minute):
		c.stop()
		return nil, fmt.Errorf("%s not ready after a minute", args[0])
	}
}

// stop closes the child's stdin and waits for it, killing it after a bound.
func (c *child) stop() {
	c.stdin.Close()
	select {
	case <-c.done:
	case <-time.After(20 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
}

// rss is the child's resident memory in bytes.
func (c *child) rss() (int64, error) {
	st, err := c.stat()
	if err != nil {
		return 0, err
	}
	return int64(st.ResidentMemory()), nil
}

// stat is the child's /proc/PID/stat.
func (c *child) stat() (procfs.ProcStat, error) {
	p, err := procfs.NewProc(c.cmd.Process.Pid)
	if err != nil {
		return procfs.ProcStat{}, err
	}
	return p.Stat()
}
