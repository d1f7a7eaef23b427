package main

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The framework variant, copied into etcd's framework/integration.
//
//go:embed framework/cluster_coordproxy.go
var clusterCoordproxy []byte

// memberHook lets a variant make a member's client knowing the member (its
// request limit): NewClientV3 calls clientOfMember instead of newClientV3.
// Built in every variant; cluster_coordproxy.go replaces it in init.
const memberHook = `// Added by coordproxy's cmd/etcdsuite.

package integration

import clientv3 "go.etcd.io/etcd/client/v3"

var clientOfMember = func(_ *Member, cfg clientv3.Config) (*clientv3.Client, error) { return newClientV3(cfg) }
`

// The edits to etcd's files, each checked to apply exactly once.
var patches = []struct{ file, old, new string }{
	{"framework/integration/cluster_direct.go", "//go:build !cluster_proxy\n", "//go:build !cluster_proxy && !cluster_coordproxy\n"},
	{"framework/integration/cluster.go", "\treturn newClientV3(cfg)\n}\n", "\treturn clientOfMember(m, cfg)\n}\n"},
}

// Left out of the copy: files that need a module the Go module proxy does
// not serve (etcd's cache library is not published there), and the
// requirement itself.
var (
	leftOut     = []string{"integration/cache_test.go"}
	unavailable = []string{"go.etcd.io/etcd/cache/v3"}
)

const testsModule = "go.etcd.io/etcd/tests/v3"

// etcdVersion is the version of etcd's server module coordproxy requires.
func etcdVersion(repo string) (string, error) {
	cmd := exec.Command(goTool(), "list", "-m", "-f", "{{.Version}}", "go.etcd.io/etcd/server/v3")
	cmd.Dir = repo
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go list -m go.etcd.io/etcd/server/v3: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// prepare makes work/tests a patched copy of etcd's tests module at version
// that requires coordproxy from repo, and returns its directory.
func prepare(ctx context.Context, repo, version, work string, log io.Writer) (string, error) {
	src, err := download(ctx, testsModule+"@"+version)
	if err != nil {
		return "", err
	}
	mod := filepath.Join(work, "tests")
	if err := os.RemoveAll(mod); err != nil {
		return "", err
	}
	if err := copyTree(src, mod); err != nil {
		return "", fmt.Errorf("copy %s: %w", src, err)
	}
	for _, p := range patches {
		f := filepath.Join(mod, p.file)
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		if n := bytes.Count(b, []byte(p.old)); n != 1 {
			return "", fmt.Errorf("%s of %s %s: %q found %d times, want once (etcd changed it: update cmd/etcdsuite)", p.file, testsModule, version, p.old, n)
		}
		if err := os.WriteFile(f, bytes.Replace(b, []byte(p.old), []byte(p.new), 1), 0o644); err != nil {
			return "", err
		}
	}
	for _, f := range leftOut {
		if err := os.Remove(filepath.Join(mod, f)); err != nil {
			return "", fmt.Errorf("leave out %s: %w", f, err)
		}
	}
	fw := filepath.Join(mod, "framework", "integration")
	if err := os.WriteFile(filepath.Join(fw, "cluster_coordproxy.go"), clusterCoordproxy, 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(fw, "cluster_member_hook.go"), []byte(memberHook), 0o644); err != nil {
		return "", err
	}
	// etcd's go.mod replaces its own modules with the directories next to
	// it in etcd's repository; here they come from the module proxy.
	gomod, err := os.ReadFile(filepath.Join(mod, "go.mod"))
	if err != nil {
		return "", err
	}
	edit := []string{"mod", "edit",
		"-require=github.com/coordproxy/coordproxy@v0.0.0-00010101000000-000000000000",
		"-replace=github.com/coordproxy/coordproxy=" + repo}
	for _, m := range unavailable {
		edit = append(edit, "-droprequire="+m, "-dropreplace="+m)
	}
	for _, line := range strings.Split(string(gomod), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "../") {
			edit = append(edit, "-dropreplace="+f[0])
		}
	}
	cmd := exec.CommandContext(ctx, goTool(), edit...)
	cmd.Dir = mod
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go mod edit: %w\n%s", err, out)
	}
	// Both modules' sums: what the two together select is in one of them.
	ours, err := os.ReadFile(filepath.Join(repo, "go.sum"))
	if err != nil {
		return "", err
	}
	f, err := os.OpenFile(filepath.Join(mod, "go.sum"), os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return "", err
	}
	_, err = f.Write(ours)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", err
	}
	fmt.Fprintf(log, "etcdsuite: %s %s patched in %s\n", testsModule, version, mod)
	return mod, nil
}

// download fetches a module into the module cache and returns its
// directory there.
func download(ctx context.Context, modVersion string) (string, error) {
	cmd := exec.CommandContext(ctx, goTool(), "mod", "download", "-json", modVersion)
	cmd.Dir = os.TempDir() // outside any module
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GO111MODULE=on")
	out, err := cmd.Output()
	var m struct{ Dir, Error string }
	if jerr := json.Unmarshal(out, &m); jerr == nil && m.Error != "" {
		return "", fmt.Errorf("go mod download %s: %s", modVersion, m.Error)
	}
	if err != nil {
		return "", fmt.Errorf("go mod download %s: %w", modVersion, err)
	}
	return m.Dir, nil
}

// copyTree copies the files under src to dst, writable.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(to, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(to, b, 0o644)
	})
}
