package e2e

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/coordproxy/coordproxy/internal/testcache"
)

// binDir holds the etcd and coordproxy binaries built for this test run.
var binDir string

func TestMain(m *testing.M) {
	if addr := os.Getenv(occupyEnv); addr != "" {
		// Run as the command of `etcdctl lock` (see etcdctl_test.go).
		os.Exit(occupyMain(addr))
	}
	flag.Parse()
	if testing.Short() {
		// Real etcd clusters and coordproxy processes take minutes: the
		// fast loop (go test -short ./...) leaves them to the full suite.
		fmt.Println("e2e: skipped with -short; go test ./... runs it")
		os.Exit(0)
	}
	var err error
	if binDir, err = os.MkdirTemp("", "coordproxy-e2e-bin"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(binDir)
	os.Exit(code)
}

// binaries builds etcd (from the pinned module) and coordproxy once.
var binaries = sync.OnceValues(func() (struct{ etcd, coordproxy string }, error) {
	var out struct{ etcd, coordproxy string }
	out.etcd = filepath.Join(binDir, "etcd")
	out.coordproxy = filepath.Join(binDir, "coordproxy")
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, b := range []struct{ bin, pkg string }{
		{out.etcd, "github.com/coordproxy/coordproxy/e2e/etcd"},
		{out.coordproxy, "github.com/coordproxy/coordproxy/cmd/coordproxy"},
	} {
		wg.Go(func() { errs[i] = goBuild(b.bin, b.pkg) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return out, err
		}
	}
	return out, nil
})

// holderBinary builds the holder processes' program (e2e/holder) once.
var holderBinary = sync.OnceValues(func() (string, error) {
	bin := filepath.Join(binDir, "holder")
	return bin, goBuild(bin, "github.com/coordproxy/coordproxy/e2e/holder")
})

func mustHolderBinary(t *testing.T) string {
	t.Helper()
	b, err := holderBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// etcdctlBinary builds etcd's own etcdctl (e2e/etcdctl) once, for the tests
// that drive the proxy with it.
var etcdctlBinary = sync.OnceValues(func() (string, error) {
	bin := filepath.Join(binDir, "etcdctl")
	return bin, goBuild(bin, "github.com/coordproxy/coordproxy/e2e/etcdctl")
})

// goBuild builds pkg into bin with the go command of the running toolchain.
func goBuild(bin, pkg string) error {
	readSources()
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, pkg)
	if o, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, o)
	}
	return nil
}

func mustBinaries(t *testing.T) (etcd, coordproxy string) {
	t.Helper()
	b, err := binaries()
	if err != nil {
		t.Fatal(err)
	}
	return b.etcd, b.coordproxy
}

// readSources reads the module's sources once, so that a change to any
// source of the programs these tests build reruns the package
// (internal/testcache).
var readSources = sync.OnceFunc(func() { testcache.ReadSources("..") })
