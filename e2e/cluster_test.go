package e2e

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/proxy/proxytest"
	clientv3 "go.etcd.io/etcd/client/v3"
	etcdproxy "go.etcd.io/etcd/pkg/v3/proxy"
	"go.uber.org/zap"
)

// member is one etcd server process. Its clients reach it through
// clientProxy (etcd's pkg/v3/proxy), its peers through peer (peerProxy).
type member struct {
	name    string
	id      string // member ID in hex, as raft's X-Server-From header names it
	dir     string
	logPath string
	args    []string

	clientAddr, peerAddr string // where etcd listens
	clientURL            string // what clients dial: the client proxy
	clientProxy          etcdproxy.Server
	peer                 *peerProxy

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

type cluster struct {
	t       *testing.T
	bin     string
	members []*member
}

// startCluster starts an n-member etcd cluster of real processes on
// loopback and waits until it has a leader.
func startCluster(t *testing.T, n int) *cluster {
	t.Helper()
	bin, _ := mustBinaries(t)
	return startClusterOf(t, n, bin)
}

// startClusterOf starts n members of the etcd server at bin.
func startClusterOf(t *testing.T, n int, bin string) *cluster {
	t.Helper()
	c := &cluster{t: t, bin: bin}
	var initial []string
	for i := range n {
		m := &member{name: fmt.Sprintf("m%d", i), dir: filepath.Join(t.TempDir(), "data")}
		m.logPath = filepath.Join(t.TempDir(), m.name+".log")
		m.clientAddr, m.peerAddr = proxytest.FreeAddr(t), proxytest.FreeAddr(t)
		clientProxyAddr, peerProxyAddr := proxytest.FreeAddr(t), proxytest.FreeAddr(t)
		m.clientURL = "http://" + clientProxyAddr
		m.clientProxy = etcdproxy.NewServer(etcdproxy.ServerConfig{
			Logger: zap.NewNop(),
			From:   mustURL(t, "tcp://"+clientProxyAddr),
			To:     mustURL(t, "tcp://"+m.clientAddr),
		})
		<-m.clientProxy.Ready()
		drainErrors(m.clientProxy)
		t.Cleanup(func() { m.clientProxy.Close() })
		m.peer = startPeerProxy(t, peerProxyAddr, "http://"+m.peerAddr)
		initial = append(initial, m.name+"=http://"+peerProxyAddr)
		m.args = []string{
			"--name", m.name,
			"--data-dir", m.dir,
			"--listen-client-urls", "http://" + m.clientAddr,
			"--advertise-client-urls", m.clientURL,
			"--listen-peer-urls", "http://" + m.peerAddr,
			"--initial-advertise-peer-urls", "http://" + peerProxyAddr,
			"--initial-cluster-token", "coordproxy-e2e",
			"--initial-cluster-state", "new",
			// A killed process loses nothing the kernel has: fsync only
			// matters for machine crashes, which these tests do not make.
			"--unsafe-no-fsync",
			"--log-level", "warn",
		}
		c.members = append(c.members, m)
	}
	for _, m := range c.members {
		m.args = append(m.args, "--initial-cluster", strings.Join(initial, ","))
		c.start(m)
	}
	c.waitLeader(time.Minute)
	cli := c.client()
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ml, err := cli.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, mm := range ml.Members {
		for _, m := range c.members {
			if mm.Name == m.name {
				m.id = strconv.FormatUint(mm.ID, 16)
			}
		}
	}
	t.Cleanup(func() {
		for _, m := range c.members {
			c.kill(m)
		}
		if t.Failed() {
			for _, m := range c.members {
				b, _ := os.ReadFile(m.logPath)
				t.Logf("--- %s log (last 3000 bytes) ---\n%s", m.name, tail(b, 3000))
			}
		}
	})
	return c
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

func mustURL(t *testing.T, s string) url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return *u
}

func drainErrors(p etcdproxy.Server) {
	go func() {
		for {
			select {
			case <-p.Error():
			case <-p.Done():
				return
			}
		}
	}()
}

// start runs m's process; on a restart its data directory is reused.
func (c *cluster) start(m *member) {
	c.t.Helper()
	logf, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(c.bin, m.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(done)
	}()
	m.mu.Lock()
	m.cmd, m.done = cmd, done
	m.mu.Unlock()
}

// kill SIGKILLs m and waits for it to exit.
func (c *cluster) kill(m *member) {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// restart starts a killed member again on its data.
func (c *cluster) restart(m *member) { c.start(m) }

func (c *cluster) endpoints() []string {
	var eps []string
	for _, m := range c.members {
		eps = append(eps, m.clientURL)
	}
	return eps
}

func (c *cluster) client() *clientv3.Client {
	c.t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		c.t.Fatal(err)
	}
	return cli
}

// leader returns the member that leads, asking each member directly.
func (c *cluster) leader() (*member, error) {
	var lastErr error
	for _, m := range c.members {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{m.clientURL}, DialTimeout: time.Second, Logger: zap.NewNop()})
		if err != nil {
			lastErr = err
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := cli.Status(ctx, m.clientURL)
		cancel()
		cli.Close()
		if err != nil {
			lastErr = err
			continue
		}
		for _, l := range c.members {
			if st.Leader != 0 && l.id == strconv.FormatUint(st.Leader, 16) {
				return l, nil
			}
		}
		lastErr = fmt.Errorf("%s knows no leader", m.name)
	}
	return nil, lastErr
}

// waitNewLeader waits until a member other than old leads.
func (c *cluster) waitNewLeader(old *member, bound time.Duration) *member {
	c.t.Helper()
	deadline := time.Now().Add(bound)
	for {
		l, err := c.leader()
		if err == nil && l != old {
			return l
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("no new leader after %s: %v", bound, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitLeader waits until a write through all endpoints succeeds.
func (c *cluster) waitLeader(bound time.Duration) {
	c.t.Helper()
	cli := c.client()
	defer cli.Close()
	deadline := time.Now().Add(bound)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := cli.Put(ctx, "e2e-health", time.Now().String())
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("etcd cluster not writable after %s: %v", bound, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// partition cuts m off from every other member, both ways.
func (c *cluster) partition(m *member) {
	var others []string
	for _, o := range c.members {
		if o != m {
			others = append(others, o.id)
			o.peer.setCut(m.id)
		}
	}
	m.peer.setCut(others...)
}

// heal undoes every partition.
func (c *cluster) heal() {
	for _, m := range c.members {
		m.peer.setCut()
	}
}
