package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/internal/testcache"
)

// The fast part of etcd's own suites (etcdsuite -fast: concurrency,
// recipes, and the Lock and Election tests of tests/integration) passes
// with every client behind a coordproxy. The rest runs with
// `go run ./cmd/etcdsuite` (docs/etcd-suites.md).
func TestEtcdSuites_fastPartPassesThroughCoordproxy(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: etcd's suites run in the full suite")
	}
	// The suites run in a go test of their own, built with this module's
	// proxy: its sources must rerun this test when they change.
	testcache.ReadSources("../..")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	var out, log bytes.Buffer
	code := run(ctx, []string{"-fast"}, &out, &log)
	t.Logf("\n%s", out.String())
	if code != 0 {
		t.Fatalf("etcdsuite -fast: exit %d\n%s", code, tailString(log.String(), 8000))
	}
	// Every fast suite ran tests, and none failed.
	for _, id := range suiteIDs(true) {
		if !strings.Contains(out.String(), "| "+id+" |") {
			t.Errorf("suite %s is missing from the report", id)
		}
	}
}

func TestEtcdSuites_badUsage(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-suites", "nope"}, `no suite "nope"`},
		{[]string{"-batching", "sometimes"}, `-batching "sometimes"`},
	} {
		var out, log bytes.Buffer
		if code := run(context.Background(), c.args, &out, &log); code != 2 || !strings.Contains(log.String(), c.want) {
			t.Errorf("%v: exit %d, %q; want 2 and %q", c.args, code, log.String(), c.want)
		}
	}
}

func tailString(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}
