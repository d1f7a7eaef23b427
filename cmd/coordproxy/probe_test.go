package main

import (
	"bytes"
	"net"
	"strings"
	"testing"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
)

// runProbe runs the program as `coordproxy probe args...`.
func runProbe(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(append([]string{"probe"}, args...), &out, &errOut)
	return code, out.String(), errOut.String()
}

// checkProbe requires exit code want and, unless it is 0, exactly one line
// on stderr that contains every one of why.
func checkProbe(t *testing.T, want int, why []string, args ...string) {
	t.Helper()
	code, _, stderr := runProbe(t, args...)
	if code != want {
		t.Fatalf("probe %q: exit %d, stderr %q; want exit %d", args, code, stderr, want)
	}
	if want == 0 {
		if stderr != "" {
			t.Fatalf("probe %q succeeded but wrote %q to stderr", args, stderr)
		}
		return
	}
	if !strings.HasPrefix(stderr, "coordproxy probe: ") || strings.Count(stderr, "\n") != 1 || !strings.HasSuffix(stderr, "\n") {
		t.Fatalf("probe %q: stderr %q; want one line starting with \"coordproxy probe: \"", args, stderr)
	}
	for _, w := range why {
		if !strings.Contains(stderr, w) {
			t.Fatalf("probe %q: stderr %q lacks %q", args, stderr, w)
		}
	}
}

func TestProbe_followsReadinessOfARealProxy(t *testing.T) {
	etcd := proxytest.StartEtcd(t)
	srv := proxytest.StartProxy(t, []string{etcd.URL}, proxy.Config{})
	base := "http://" + srv.Addr().String()

	checkProbe(t, 0, nil, base+"/readyz")
	checkProbe(t, 0, nil, base+"/healthz")

	etcd.Close()
	// The proxy needs up to proxy.ReadyTimeout to give up on etcd; the
	// generous timeout keeps a loaded machine from turning the 503 into a
	// probe timeout.
	checkProbe(t, 1, []string{"GET " + base + "/readyz", "503 Service Unavailable", `"not ready"`}, "--timeout", "1m", base+"/readyz")
	checkProbe(t, 0, nil, base+"/healthz")
	checkProbe(t, 1, []string{"404 Not Found"}, base+"/no-such-page")
}

func TestProbe_failsWithoutAnAnswer(t *testing.T) {
	refused := "http://" + proxytest.FreeAddr(t) + "/readyz"
	checkProbe(t, 1, []string{"GET " + refused, "connection refused"}, refused)

	// A listener nobody accepts from: the kernel completes the handshake,
	// no HTTP answer ever comes.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	checkProbe(t, 1, []string{"no answer within 100ms"}, "--timeout", "100ms", "http://"+silent.Addr().String()+"/readyz")
}

func TestProbe_badUsageExitsTwo(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no URL", nil, "want one URL, got 0 arguments"},
		{"two URLs", []string{"http://a:1/readyz", "http://b:1/readyz"}, "want one URL, got 2 arguments"},
		{"flag after URL", []string{"http://a:1/readyz", "--timeout", "1s"}, "want one URL, got 3 arguments"},
		{"not a URL", []string{"127.0.0.1:23790/readyz"}, `invalid URL "127.0.0.1:23790/readyz"`},
		{"another scheme", []string{"ftp://a:1/readyz"}, `invalid URL "ftp://a:1/readyz"`},
		{"no host", []string{"http:///readyz"}, `invalid URL "http:///readyz"`},
		{"zero timeout", []string{"--timeout", "0s", "http://a:1/readyz"}, "invalid --timeout 0s: must be positive"},
		{"bad timeout", []string{"--timeout", "soon", "http://a:1/readyz"}, `invalid value "soon" for flag -timeout`},
		{"unknown flag", []string{"--insecure", "http://a:1/readyz"}, "flag provided but not defined: -insecure"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkProbe(t, 2, []string{tt.want, "usage: coordproxy probe"}, tt.args...)
		})
	}
}

func TestProbe_helpGoesToStdout(t *testing.T) {
	code, stdout, stderr := runProbe(t, "-h")
	if code != 0 || stderr != "" || !strings.Contains(stdout, "Usage: coordproxy probe") {
		t.Fatalf("exit %d, stdout %q, stderr %q; want exit 0 and usage on stdout", code, stdout, stderr)
	}
}

func TestProbe_defaultTimeoutOutlastsReadyCheck(t *testing.T) {
	// Otherwise a probe of /readyz against a slow etcd times out before the
	// proxy can answer 503 with the reason.
	if defaultProbeTimeout <= proxy.ReadyTimeout {
		t.Fatalf("default probe timeout %s is not longer than proxy.ReadyTimeout %s", defaultProbeTimeout, proxy.ReadyTimeout)
	}
}
