package proxytest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// EtcdVersions are the etcd server versions besides the module's own (3.7,
// embedded) that the tests run coordproxy against: each is built from its
// own module, e2e/etcd-v<version> (one module cannot hold two versions of
// etcd's server).
var EtcdVersions = []string{"3.5", "3.6"}

var etcdBuilds sync.Map // version → func() (string, error)

// EtcdBinary builds the etcd server of version (one of EtcdVersions) once
// per test process and returns its path.
func EtcdBinary(t testing.TB, version string) string {
	t.Helper()
	build, _ := etcdBuilds.LoadOrStore(version, sync.OnceValues(func() (string, error) {
		root, err := repoRoot()
		if err != nil {
			return "", err
		}
		dir, err := os.MkdirTemp("", "coordproxy-etcd-"+version)
		if err != nil {
			return "", err
		}
		bin := filepath.Join(dir, "etcd")
		cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, ".")
		cmd.Dir = filepath.Join(root, "e2e", "etcd-v"+version)
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("building etcd %s in %s: %w\n%s", version, cmd.Dir, err, out)
		}
		return bin, nil
	}))
	bin, err := build.(func() (string, error))()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// repoRoot is the directory of this module's go.mod, found upwards from the
// test's working directory.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.HasPrefix(b, []byte("module github.com/coordproxy/coordproxy\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no github.com/coordproxy/coordproxy go.mod above the working directory")
		}
		dir = parent
	}
}

// EtcdProcess is a single-member etcd server process.
type EtcdProcess struct {
	URL string
	cmd *exec.Cmd
	log LockedBuffer
}

// StartEtcdProcess starts a single-member etcd of version (one of
// EtcdVersions) on free loopback ports, its data in a temp dir; it is
// killed at cleanup.
func StartEtcdProcess(t testing.TB, version string) *EtcdProcess {
	t.Helper()
	bin := EtcdBinary(t, version)
	client, peer := FreeAddr(t), FreeAddr(t)
	p := &EtcdProcess{URL: "http://" + client}
	p.cmd = exec.Command(bin,
		"--name", "m0", "--data-dir", filepath.Join(t.TempDir(), "data"),
		"--listen-client-urls", p.URL, "--advertise-client-urls", p.URL,
		"--listen-peer-urls", "http://"+peer, "--initial-advertise-peer-urls", "http://"+peer,
		"--initial-cluster", "m0=http://"+peer, "--unsafe-no-fsync", "--log-level", "error")
	p.cmd.Stdout, p.cmd.Stderr = &p.log, &p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.cmd.Process.Kill(); p.cmd.Wait() })
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{p.URL}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	deadline := time.Now().Add(time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Get(ctx, "health")
		cancel()
		if err == nil {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd %s did not answer within a minute: %v\n%s", version, err, p.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
