package deploy

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	cmd  string // upper case: FROM, RUN...
	args string
	line int
}

// stage is the instructions from one FROM to the next.
type stage struct {
	image, alias string
	ins          []instruction
}

func parseDockerfile(t *testing.T) []stage {
	t.Helper()
	path := filepath.Join(root, "Dockerfile")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var stages []stage
	var cur strings.Builder
	start := 0
	flush := func() {
		text := strings.TrimSpace(cur.String())
		cur.Reset()
		if text == "" {
			return
		}
		cmd, args, _ := strings.Cut(text, " ")
		in := instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args), line: start}
		if in.cmd == "FROM" {
			var s stage
			fields := strings.Fields(in.args)
			for i := 0; i < len(fields); i++ {
				switch {
				case strings.HasPrefix(fields[i], "--"):
				case strings.EqualFold(fields[i], "AS") && i+1 < len(fields):
					s.alias = fields[i+1]
					i++
				default:
					s.image = fields[i]
				}
			}
			stages = append(stages, s)
		}
		if len(stages) == 0 {
			t.Fatalf("%s:%d: %s before the first FROM", path, in.line, in.cmd)
		}
		stages[len(stages)-1].ins = append(stages[len(stages)-1].ins, in)
	}
	for i, l := range strings.Split(string(data), "\n") {
		trimmed := strings.TrimSpace(l)
		if strings.HasPrefix(trimmed, "#") {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if strings.HasSuffix(trimmed, `\`) {
			cur.WriteString(strings.TrimSuffix(trimmed, `\`) + " ")
			continue
		}
		cur.WriteString(trimmed)
		flush()
	}
	flush()
	if len(stages) < 2 {
		t.Fatalf("%s has %d stages; want a build stage and a final one", path, len(stages))
	}
	return stages
}

// find returns the index of the first instruction of s that is cmd and whose
// arguments contain every one of parts, or -1.
func (s stage) find(cmd string, parts ...string) int {
	for i, in := range s.ins {
		if in.cmd != cmd {
			continue
		}
		all := true
		for _, p := range parts {
			all = all && strings.Contains(in.args, p)
		}
		if all {
			return i
		}
	}
	return -1
}

// imageEntrypoint is the final stage's ENTRYPOINT.
func imageEntrypoint(t *testing.T) []string {
	t.Helper()
	stages := parseDockerfile(t)
	final := stages[len(stages)-1]
	i := final.find("ENTRYPOINT")
	if i < 0 {
		t.Fatal("Dockerfile: final stage has no ENTRYPOINT")
	}
	var ep []string
	if err := json.Unmarshal([]byte(final.ins[i].args), &ep); err != nil || len(ep) == 0 {
		t.Fatalf("Dockerfile:%d: ENTRYPOINT %s is not the exec (JSON) form: a shell-less image has no /bin/sh", final.ins[i].line, final.ins[i].args)
	}
	return ep
}

func TestDockerfile_buildsStaticBinaryWithCachedModules(t *testing.T) {
	build := parseDockerfile(t)[0]
	if want := "golang:" + goVersion(t); build.image != want {
		t.Errorf("Dockerfile builds with %q; want %q, the go directive of go.mod", build.image, want)
	}
	mods := build.find("COPY", "go.mod", "go.sum")
	download := build.find("RUN", "go mod download")
	all := build.find("COPY", ". .")
	if mods < 0 || download < 0 || all < 0 || !(mods < download && download < all) {
		t.Errorf("Dockerfile: want COPY go.mod go.sum, then RUN go mod download, then COPY . . (found at %d, %d, %d), so that modules are a layer of their own", mods, download, all)
	}
	if build.find("RUN", "go build", "CGO_ENABLED=0", "-trimpath", "-o /coordproxy", "./cmd/coordproxy") < 0 {
		t.Error("Dockerfile: no RUN with CGO_ENABLED=0 go build -trimpath -o /coordproxy ./cmd/coordproxy")
	}
}

func TestDockerfile_finalImageRunsAsNonRootOnThePublishedPort(t *testing.T) {
	stages := parseDockerfile(t)
	build, final := stages[0], stages[len(stages)-1]
	distroless := strings.HasPrefix(final.image, "gcr.io/distroless/static") && strings.HasSuffix(final.image, ":nonroot")
	if !distroless && final.image != "scratch" {
		t.Errorf("final image %q; want gcr.io/distroless/static...:nonroot or scratch", final.image)
	}
	if i := final.find("USER"); i < 0 {
		if !distroless {
			t.Error("final stage has no USER; on scratch it would run as root")
		}
	} else if u := final.ins[i].args; u != "65532:65532" && u != "65532" && u != "nonroot" && u != "nonroot:nonroot" {
		t.Errorf("final stage runs as USER %s; want 65532:65532 (nonroot)", u)
	}
	if final.find("COPY", "--from="+build.alias, "/coordproxy /coordproxy") < 0 {
		t.Errorf("final stage does not COPY --from=%s /coordproxy /coordproxy", build.alias)
	}
	if ep := imageEntrypoint(t); len(ep) != 1 || ep[0] != "/coordproxy" {
		t.Errorf("ENTRYPOINT %q; want [\"/coordproxy\"]", ep)
	}
	i := final.find("ENV", "COORDPROXY_LISTEN=")
	if i < 0 {
		t.Fatal("final stage does not set ENV COORDPROXY_LISTEN=: the binary's default, 127.0.0.1, is unreachable from outside the container")
	}
	_, listen, _ := strings.Cut(final.ins[i].args, "COORDPROXY_LISTEN=")
	listen, _, _ = strings.Cut(listen, " ")
	host, port, err := net.SplitHostPort(listen)
	if err != nil || host != "0.0.0.0" {
		t.Errorf("ENV COORDPROXY_LISTEN=%s; want 0.0.0.0:<port>", listen)
	}
	if final.find("EXPOSE", port) < 0 || port == "" {
		t.Errorf("final stage does not EXPOSE %s, the port of COORDPROXY_LISTEN=%s", port, listen)
	}
}

// TestDockerignore_keepsWhatTheBuildNeeds: the build context must hold
// go.mod, go.sum and every source file the binary is built from, and not
// the repository's history.
func TestDockerignore_keepsWhatTheBuildNeeds(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	var patterns []string
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, "!") {
			t.Fatalf(".dockerignore: exception %q: this test does not handle exceptions", l)
		}
		patterns = append(patterns, strings.Trim(l, "/"))
	}
	ignored := func(path string) string {
		for _, p := range patterns {
			// A pattern that matches a directory excludes all beneath it.
			for prefix := path; prefix != "."; prefix = filepath.Dir(prefix) {
				if ok, _ := filepath.Match(p, prefix); ok {
					return p
				}
			}
		}
		return ""
	}
	if ignored(".git") == "" {
		t.Error(".dockerignore does not exclude .git")
	}
	needed := []string{"go.mod", "go.sum"}
	absRoot, err := filepath.Abs(root)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "list", "-deps", "-f", `{{.Dir}}{{range .GoFiles}} {{.}}{{end}}`, "./cmd/coordproxy")
	cmd.Dir = absRoot
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(l)
		rel, err := filepath.Rel(absRoot, fields[0])
		if err != nil || strings.HasPrefix(rel, "..") {
			continue // outside the module: standard library or a dependency
		}
		for _, f := range fields[1:] {
			needed = append(needed, filepath.Join(rel, f))
		}
	}
	if len(needed) < 10 {
		t.Fatalf("found only %v as the binary's sources", needed)
	}
	for _, f := range needed {
		if p := ignored(f); p != "" {
			t.Errorf(".dockerignore pattern %q leaves %s out of the build context", p, f)
		}
	}
}

// goVersion is the major.minor of go.mod's go directive.
func goVersion(t *testing.T) string {
	t.Helper()
	v := goModField(t, "go")
	parts := strings.Split(v, ".")
	if len(parts) < 2 {
		t.Fatalf("go.mod: go %q", v)
	}
	return parts[0] + "." + parts[1]
}

// goModField is the first word after key at the start of a line of go.mod
// (a directive, or a module path in a require block).
func goModField(t *testing.T, key string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(l), "require "))
		if len(f) >= 2 && f[0] == key {
			return f[1]
		}
	}
	t.Fatalf("go.mod has no %s", key)
	return ""
}
