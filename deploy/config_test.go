package deploy

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// root is the repository's top directory, seen from this package's.
const root = ".."

// proxyVars maps every environment variable coordproxy reads to its default
// (empty if none), as declared by the envconfig and default tags of the
// structs in cmd/coordproxy/config.go and its envPrefix constant.
func proxyVars(t *testing.T) map[string]string {
	t.Helper()
	path := filepath.Join(root, "cmd", "coordproxy", "config.go")
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	prefix := ""
	var tags []reflect.StructTag
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.ValueSpec:
			for i, name := range n.Names {
				if name.Name == "envPrefix" && i < len(n.Values) {
					if lit, ok := n.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
						prefix, _ = strconv.Unquote(lit.Value)
					}
				}
			}
		case *ast.Field:
			if n.Tag != nil {
				tag, err := strconv.Unquote(n.Tag.Value)
				if err != nil {
					t.Fatalf("%s: tag %s: %v", path, n.Tag.Value, err)
				}
				tags = append(tags, reflect.StructTag(tag))
			}
		}
		return true
	})
	if prefix == "" {
		t.Fatalf("%s: no string constant envPrefix", path)
	}
	vars := map[string]string{}
	for _, tag := range tags {
		if name, ok := tag.Lookup("envconfig"); ok {
			vars[prefix+"_"+name] = tag.Get("default")
		}
	}
	// The parse must have found the settings every deployment uses, or the
	// checks against it prove nothing.
	for _, v := range []string{"COORDPROXY_ENDPOINTS", "COORDPROXY_LISTEN", "COORDPROXY_SHUTDOWN_TIMEOUT"} {
		if _, ok := vars[v]; !ok {
			t.Fatalf("%s: found variables %v, lacking %s", path, keys(vars), v)
		}
	}
	return vars
}

// setting is the value coordproxy uses for variable name when its
// environment is env: env's value, else config.go's default (false if it has
// none).
func setting(t *testing.T, env map[string]string, name string) (string, bool) {
	t.Helper()
	if v, ok := env[name]; ok {
		return v, true
	}
	def, ok := proxyVars(t)[name]
	if !ok {
		t.Fatalf("coordproxy reads no variable %s", name)
	}
	return def, ok && def != ""
}

// durationSetting is setting for a duration; a variable without a value is 0.
func durationSetting(t *testing.T, env map[string]string, name string) time.Duration {
	t.Helper()
	v, ok := setting(t, env, name)
	if !ok {
		return 0
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, v, err)
	}
	return d
}

var varPattern = regexp.MustCompile(`COORDPROXY_[A-Z0-9_]+`)

func TestPackaging_usesOnlyVariablesCoordproxyReads(t *testing.T) {
	known := proxyVars(t)
	files := []string{filepath.Join(root, "Dockerfile"), filepath.Join(root, "docker-compose.yml")}
	for _, glob := range []string{"compose/*", "kubernetes/*.yaml"} {
		m, err := filepath.Glob(glob)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	found := map[string]bool{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(data), "\n") {
			for _, v := range varPattern.FindAllString(line, -1) {
				found[v] = true
				if _, ok := known[v]; !ok {
					t.Errorf("%s:%d: %s is not a variable coordproxy reads (config.go has %v)", f, i+1, v, keys(known))
				}
			}
		}
	}
	// The files must have been read: each of them sets these.
	for _, v := range []string{"COORDPROXY_ENDPOINTS", "COORDPROXY_LISTEN"} {
		if !found[v] {
			t.Errorf("no packaging file mentions %s; were the files found? %v", v, files)
		}
	}
}

func keys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// TestProbeTimeout_isTheCommandsDefault keeps defaultProbeTimeout, against
// which the health checks' own timeouts are measured, equal to the constant
// in cmd/coordproxy/probe.go, written there as N * time.Second.
func TestProbeTimeout_isTheCommandsDefault(t *testing.T) {
	path := filepath.Join(root, "cmd", "coordproxy", "probe.go")
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var got time.Duration
	ast.Inspect(f, func(n ast.Node) bool {
		vs, ok := n.(*ast.ValueSpec)
		if !ok || len(vs.Names) != 1 || vs.Names[0].Name != "defaultProbeTimeout" || len(vs.Values) != 1 {
			return true
		}
		if b, ok := vs.Values[0].(*ast.BinaryExpr); ok && b.Op == token.MUL {
			lit, okL := b.X.(*ast.BasicLit)
			sel, okR := b.Y.(*ast.SelectorExpr)
			if okL && okR && sel.Sel.Name == "Second" {
				n, _ := strconv.Atoi(lit.Value)
				got = time.Duration(n) * time.Second
			}
		}
		return false
	})
	if got != defaultProbeTimeout {
		t.Fatalf("%s: defaultProbeTimeout is %s (0: not N * time.Second); this package assumes %s", path, got, defaultProbeTimeout)
	}
}
