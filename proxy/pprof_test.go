package proxy_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
)

func TestPprof_servedOnlyWhenEnabled(t *testing.T) {
	etcd := proxytest.StartEtcd(t)
	for _, tt := range []struct {
		pprof bool
		want  int
	}{{false, http.StatusNotFound}, {true, http.StatusOK}} {
		srv := proxytest.StartProxy(t, []string{etcd.URL}, proxy.Config{Pprof: tt.pprof})
		base := "http://" + srv.Addr().String()
		for _, path := range []string{"/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/goroutine?debug=1"} {
			resp, err := http.Get(base + path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("pprof %v: GET %s: %d, want %d", tt.pprof, path, resp.StatusCode, tt.want)
			}
			if tt.pprof && path == "/debug/pprof/goroutine?debug=1" && !strings.Contains(string(body), "goroutine profile:") {
				t.Errorf("GET %s: not a goroutine profile: %.200q", path, body)
			}
		}
		// The rest of the port is unaffected.
		if resp, err := http.Get(base + "/healthz"); err != nil || resp.StatusCode != http.StatusOK {
			t.Errorf("pprof %v: /healthz: %v %v", tt.pprof, resp, err)
		} else {
			resp.Body.Close()
		}
	}
}
