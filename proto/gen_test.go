// Package proto_test checks that the committed Go code of coordproxy's own
// API is what proto/gen.sh generates from the .proto with the pinned
// generators.
package proto_test

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestGenerated_isUpToDate regenerates into a temp dir and compares every
// generated file with the committed one: editing the .proto, the gateway
// routes or a generator's version without running proto/gen.sh fails here.
func TestGenerated_isUpToDate(t *testing.T) {
	out := t.TempDir()
	cmd := exec.Command("./gen.sh", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gen.sh: %v\n%s", err, b)
	}
	fresh := generated(t, out)
	committed := generated(t, ".")
	if len(fresh) == 0 {
		t.Fatal("gen.sh generated nothing")
	}
	for _, name := range sortedKeys(fresh) {
		old, ok := committed[name]
		if !ok {
			t.Errorf("%s is generated but not committed: run proto/gen.sh", name)
			continue
		}
		if !bytes.Equal(old, fresh[name]) {
			t.Errorf("%s is stale: run proto/gen.sh", name)
		}
	}
	for _, name := range sortedKeys(committed) {
		if _, ok := fresh[name]; !ok {
			t.Errorf("%s is committed but no longer generated: remove it", name)
		}
	}
}

// The generated code must match the runtime libraries the proxy is built
// with: the plugins' modules in proto/tools/go.mod are the root go.mod's.
func TestGenerators_matchTheRuntime(t *testing.T) {
	root := requires(t, "../go.mod")
	tools := requires(t, "tools/go.mod")
	for _, mod := range []string{"google.golang.org/protobuf", "github.com/grpc-ecosystem/grpc-gateway/v2"} {
		if root[mod] == "" || root[mod] != tools[mod] {
			t.Errorf("%s: go.mod has %q, proto/tools/go.mod %q; pin the generator to the runtime's version", mod, root[mod], tools[mod])
		}
	}
}

// generatedCode is Go's marker of a generated file (go help generate).
var generatedCode = regexp.MustCompile(`(?m)^// Code generated .* DO NOT EDIT\.$`)

// generated reads the generated Go files under dir.
func generated(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == "tools" {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if !generatedCode.Match(b) {
			return nil // hand-written: this test, doc files
		}
		rel, _ := filepath.Rel(dir, path)
		files[rel] = b
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// requires lists a go.mod's required module versions.
func requires(t *testing.T, gomod string) map[string]string {
	t.Helper()
	b, err := exec.Command("go", "mod", "edit", "-json", gomod).Output()
	if err != nil {
		t.Fatalf("go mod edit -json %s: %v", gomod, err)
	}
	var mf struct {
		Require []struct{ Path, Version string }
	}
	if err := json.Unmarshal(b, &mf); err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, r := range mf.Require {
		m[r.Path] = r.Version
	}
	return m
}

func sortedKeys(m map[string][]byte) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
