// Command etcdsuite runs etcd's own integration tests with every client they
// make behind coordproxy: etcd's tests/v3 module, at the version of etcd in
// coordproxy's go.mod, built with a framework variant of coordproxy's
// (framework/cluster_coordproxy.go) in the place etcd gives its grpc-proxy
// (cluster_proxy.go). A test counts against coordproxy only when it fails
// through the proxy; -direct runs the same tests straight at etcd to compare.
//
//	go run ./cmd/etcdsuite                    # every suite below, through coordproxy
//	go run ./cmd/etcdsuite -direct            # the same, straight at etcd
//	go run ./cmd/etcdsuite -suites concurrency,recipes -batching always
//
// It needs the go command and the Go module proxy (for etcd's tests module
// and what it requires). The tests that cannot apply to a proxy in front of
// etcd are skipped, each with its reason (skips.go); docs/etcd-suites.md
// has the list and the last run's figures.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// A suite is one package of etcd's tests module, or the tests of some of
// its files.
type suite struct {
	id    string
	pkg   string   // relative to the tests module
	files []string // only the tests of these files (empty: all)
	fast  bool     // in go test ./... (cmd/etcdsuite's own test)
}

var suites = []suite{
	{id: "concurrency", pkg: "./integration/clientv3/concurrency", fast: true},
	{id: "recipes", pkg: "./integration/clientv3/experimental/recipes", fast: true},
	{id: "lock-election", pkg: "./integration", files: []string{"v3lock_grpc_test.go", "v3election_grpc_test.go", "v3_election_test.go"}, fast: true},
	{id: "lease", pkg: "./integration", files: []string{"v3_lease_test.go"}},
	{id: "kv", pkg: "./integration", files: []string{"v3_grpc_test.go", "v3_kv_test.go", "v3_stm_test.go", "txn_range_consistency_test.go"}},
	{id: "clientv3-kv", pkg: "./integration/clientv3", files: []string{"kv_test.go", "txn_test.go", "namespace_test.go"}},
	{id: "clientv3-watch", pkg: "./integration/clientv3/watch"},
	{id: "clientv3-lease", pkg: "./integration/clientv3/lease"},
}

func suiteIDs(fast bool) []string {
	var ids []string
	for _, s := range suites {
		if !fast || s.fast {
			ids = append(ids, s.id)
		}
	}
	return ids
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// options are one run's settings.
type options struct {
	repo      string // coordproxy's module root
	work      string // where etcd's tests module is copied and patched
	suites    []string
	direct    bool
	batching  string
	watches   string
	cacheKeys int
	run       string // a further -run filter
	timeout   time.Duration
	verbose   bool
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("etcdsuite", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	only := fs.String("suites", "", "comma-separated suites to run (default all): "+strings.Join(suiteIDs(false), ", "))
	fast := fs.Bool("fast", false, "only the suites go test ./... runs: "+strings.Join(suiteIDs(true), ", "))
	fs.BoolVar(&o.direct, "direct", false, "run straight at etcd, without coordproxy (to compare)")
	fs.IntVar(&o.cacheKeys, "read-cache-keys", 0, "coordproxy's --read-cache-keys (0: no read cache, as proxy.Config's zero)")
	fs.StringVar(&o.watches, "watches", "shared", "coordproxy's watches: shared (its default), forced (shared watches never end, so that a test's later watchers of a key join one, with its history) or unshared")
	fs.StringVar(&o.batching, "batching", "concurrent", "coordproxy's group commit: concurrent (its default), always (every transaction nested, as its package tests run) or off")
	fs.StringVar(&o.run, "run", "", "only the top-level tests whose names match this regular expression")
	fs.StringVar(&o.work, "work", "", "directory for the patched copy of etcd's tests module (default: one under the user's cache directory, kept between runs so that builds are cached)")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Minute, "go test -timeout of each suite")
	fs.BoolVar(&o.verbose, "v", false, "show go test's output as it runs")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	switch o.watches {
	case "shared", "forced", "unshared":
	default:
		fmt.Fprintf(stderr, "etcdsuite: -watches %q: want shared, forced or unshared\n", o.watches)
		return 2
	}
	switch o.batching {
	case "concurrent", "always", "off":
	default:
		fmt.Fprintf(stderr, "etcdsuite: -batching %q: want concurrent, always or off\n", o.batching)
		return 2
	}
	o.suites = suiteIDs(*fast)
	if *only != "" {
		o.suites = strings.Split(*only, ",")
		for _, id := range o.suites {
			if !slices.Contains(suiteIDs(false), id) {
				fmt.Fprintf(stderr, "etcdsuite: no suite %q; choose from %s\n", id, strings.Join(suiteIDs(false), ", "))
				return 2
			}
		}
	}
	var err error
	if o.repo, err = moduleRoot(); err != nil {
		fmt.Fprintf(stderr, "etcdsuite: %v\n", err)
		return 1
	}
	res, err := runSuites(ctx, o, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "etcdsuite: %v\n", err)
		return 1
	}
	res.print(stdout)
	if res.failed() {
		return 1
	}
	return 0
}

// runSuites prepares etcd's tests module and runs o's suites in it.
func runSuites(ctx context.Context, o options, log io.Writer) (*results, error) {
	version, err := etcdVersion(o.repo)
	if err != nil {
		return nil, err
	}
	if o.work == "" {
		cache, err := os.UserCacheDir()
		if err != nil {
			return nil, err
		}
		o.work = filepath.Join(cache, "coordproxy-etcdsuite", version)
	}
	mod, err := prepare(ctx, o.repo, version, o.work, log)
	if err != nil {
		return nil, err
	}
	res := &results{through: !o.direct, version: version, batching: o.batching, watches: o.watches}
	for _, id := range o.suites {
		i := slices.IndexFunc(suites, func(s suite) bool { return s.id == id })
		if err := runSuite(ctx, o, mod, suites[i], res, log); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// runSuite runs one suite with go test -json and adds its outcome to res.
func runSuite(ctx context.Context, o options, mod string, s suite, res *results, log io.Writer) error {
	args := []string{"test", "-count=1", "-json", "-timeout", o.timeout.String()}
	if !o.direct {
		args = append(args, "-tags", "cluster_coordproxy")
	}
	runRE := o.run
	if len(s.files) > 0 {
		names, err := testsIn(filepath.Join(mod, s.pkg), s.files)
		if err != nil {
			return err
		}
		if o.run != "" {
			names = filterNames(names, o.run)
		}
		runRE = "^(" + strings.Join(names, "|") + ")$"
	}
	if runRE != "" {
		args = append(args, "-run", runRE)
	}
	if !o.direct {
		if skip := skipPattern(s.id); skip != "" {
			args = append(args, "-skip", skip)
		}
	}
	args = append(args, s.pkg)
	fmt.Fprintf(log, "etcdsuite: %s: go %s\n", s.id, strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, goTool(), args...)
	cmd.Dir = mod
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "COORDPROXY_ETCD_BATCHING="+o.batching, "COORDPROXY_WATCHES="+o.watches, "COORDPROXY_READ_CACHE_KEYS="+strconv.Itoa(o.cacheKeys))
	cmd.Stderr = log
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return err
	}
	sr := &suiteResult{id: s.id, pkg: s.pkg}
	readEvents(out, sr, o.verbose, log)
	werr := cmd.Wait()
	sr.took = time.Since(start)
	switch {
	case werr != nil && len(sr.failed) == 0:
		// go test failed without a test failing: the build, a panic in
		// TestMain, a timeout.
		sr.broken = fmt.Sprintf("go test: %v", werr)
	case len(sr.passed)+len(sr.failed) == 0 && o.run == "":
		sr.broken = "no test ran: the suite's tests moved in etcd's module (update cmd/etcdsuite)"
	}
	res.suites = append(res.suites, sr)
	return ctx.Err()
}

// filterNames keeps the names matching re.
func filterNames(names []string, re string) []string {
	rx, err := regexp.Compile(re)
	if err != nil {
		return names
	}
	var out []string
	for _, n := range names {
		if rx.MatchString(n) {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return []string{"NoSuchTest"}
	}
	return out
}

// testFunc is a top-level test function's declaration.
var testFunc = regexp.MustCompile(`(?m)^func (Test[A-Za-z0-9_]*)\(t \*testing\.T\)`)

// testsIn is the names of the tests declared in dir's files.
func testsIn(dir string, files []string) ([]string, error) {
	var names []string
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return nil, err
		}
		for _, m := range testFunc.FindAllSubmatch(b, -1) {
			names = append(names, string(m[1]))
		}
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("no tests in %s %v", dir, files)
	}
	return names, nil
}

// event is one line of go test -json.
type event struct {
	Action  string
	Package string
	Test    string
	Output  string
	Elapsed float64
}

// readEvents reads go test -json from r into sr.
func readEvents(r io.Reader, sr *suiteResult, verbose bool, log io.Writer) {
	outputs := map[string]*strings.Builder{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		if verbose && e.Output != "" {
			io.WriteString(log, e.Output)
		}
		if e.Test == "" {
			if e.Action == "output" && strings.HasPrefix(e.Output, "FAIL") || strings.Contains(e.Output, "panic:") {
				sr.pkgOutput += e.Output
			}
			continue
		}
		top := !strings.Contains(e.Test, "/")
		switch e.Action {
		case "output":
			// A test's output with its subtests'.
			name := strings.SplitN(e.Test, "/", 2)[0]
			b := outputs[name]
			if b == nil {
				b = &strings.Builder{}
				outputs[name] = b
			}
			if !strings.Contains(e.Output, "logger.go:") { // etcd's member logs
				b.WriteString(e.Output)
			}
		case "pass":
			if top {
				sr.passed = append(sr.passed, e.Test)
			}
		case "skip":
			if top {
				sr.skipped = append(sr.skipped, e.Test)
			}
		case "fail":
			if top {
				sr.failed = append(sr.failed, e.Test)
				sr.failOutput = append(sr.failOutput, tail(outputs[e.Test], 4000))
			}
		}
	}
}

func tail(b *strings.Builder, n int) string {
	if b == nil {
		return ""
	}
	s := b.String()
	if len(s) > n {
		s = "…" + s[len(s)-n:]
	}
	return s
}

// results is one run's outcome.
type results struct {
	through  bool
	version  string
	batching string
	watches  string
	suites   []*suiteResult
}

type suiteResult struct {
	id, pkg                 string
	passed, failed, skipped []string
	failOutput              []string
	broken                  string
	pkgOutput               string
	took                    time.Duration
}

func (r *results) failed() bool {
	for _, s := range r.suites {
		if len(s.failed) > 0 || s.broken != "" {
			return true
		}
	}
	return false
}

func (r *results) print(w io.Writer) {
	mode := "straight at etcd"
	if r.through {
		mode = "through coordproxy (group commit: " + r.batching + "; watches: " + r.watches + ")"
	}
	fmt.Fprintf(w, "etcd's integration tests (go.etcd.io/etcd/tests/v3 %s), %s\n\n", r.version, mode)
	fmt.Fprintf(w, "| suite | package | run | pass | fail | skip | took |\n|---|---|---|---|---|---|---|\n")
	for _, s := range r.suites {
		n := len(s.passed) + len(s.failed)
		fmt.Fprintf(w, "| %s | %s | %d | %d | %d | %d | %s |\n", s.id, s.pkg, n, len(s.passed), len(s.failed), len(s.skipped), s.took.Round(time.Second))
	}
	for _, s := range r.suites {
		if s.broken != "" {
			fmt.Fprintf(w, "\n%s: %s\n%s", s.id, s.broken, s.pkgOutput)
		}
		for i, name := range s.failed {
			fmt.Fprintf(w, "\n--- FAIL %s %s\n%s", s.id, name, s.failOutput[i])
		}
	}
}

// skipPattern is the go test -skip pattern of the tests that cannot apply
// to suite id through a proxy.
func skipPattern(id string) string {
	var names []string
	for _, s := range cannotApply {
		if s.suite == id {
			names = append(names, s.test)
		}
	}
	if len(names) == 0 {
		return ""
	}
	sort.Strings(names)
	return "^(" + strings.Join(names, "|") + ")$"
}

// moduleRoot is coordproxy's module root: the directory of go.mod above
// the working directory.
func moduleRoot() (string, error) {
	out, err := exec.Command(goTool(), "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("run etcdsuite inside coordproxy's module")
	}
	return filepath.Dir(gomod), nil
}

// goTool is the go command of the toolchain that built this.
func goTool() string {
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	return "go"
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
