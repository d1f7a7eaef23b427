package main

import (
	"bytes"
	"net"
	"strings"
	"testing"
	"time"
)

func TestRun_invalidConfigurationExitsWithOneLine(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	tests := []struct {
		name string
		args []string
		env  map[string]string
		code int
		want string
	}{
		{"endpoint without scheme", []string{"--endpoints", "127.0.0.1:2379"}, nil, 2, `invalid --endpoints entry "127.0.0.1:2379"`},
		{"endpoint with another scheme", []string{"--endpoints", "ftp://h:1"}, nil, 2, `invalid --endpoints entry "ftp://h:1"`},
		{"endpoint without port", []string{"--endpoints", "http://h"}, nil, 2, `invalid --endpoints entry "http://h"`},
		{"one bad endpoint of two", []string{"--endpoints", "http://a:1,http//b:2"}, nil, 2, `invalid --endpoints entry "http//b:2"`},
		{"endpoint from env", nil, map[string]string{"COORDPROXY_ENDPOINTS": "nope"}, 2, `invalid --endpoints entry "nope"`},
		{"bad duration flag", []string{"--dial-timeout", "soon"}, nil, 2, `invalid value "soon" for flag -dial-timeout`},
		{"bad duration env", nil, map[string]string{"COORDPROXY_REQUEST_TIMEOUT": "soon"}, 2, `invalid COORDPROXY_REQUEST_TIMEOUT="soon"`},
		{"zero timeout", []string{"--request-timeout", "0s"}, nil, 2, "invalid --request-timeout 0s: must be positive"},
		{"negative timeout", []string{"--shutdown-timeout", "-1s"}, nil, 2, "invalid --shutdown-timeout -1s: must be positive"},
		{"no etcd requests allowed", []string{"--max-etcd-requests", "0"}, nil, 2, "invalid --max-etcd-requests 0: must be positive"},
		{"bad number env", nil, map[string]string{"COORDPROXY_MAX_ETCD_REQUESTS": "many"}, 2, `invalid COORDPROXY_MAX_ETCD_REQUESTS="many"`},
		{"listen without port", []string{"--listen", "localhost"}, nil, 2, `invalid --listen "localhost"`},
		{"listen port out of range", []string{"--listen", "127.0.0.1:70000"}, nil, 2, `invalid --listen "127.0.0.1:70000"`},
		{"log level", []string{"--log-level", "loud"}, nil, 2, `invalid --log-level "loud"`},
		{"namespace without trailing slash", []string{"--namespace", "app1"}, nil, 2, `invalid --namespace "app1": must end in "/"`},
		{"unknown flag", []string{"--endpoint", "http://a:1"}, nil, 2, "flag provided but not defined: -endpoint"},
		{"stray argument", []string{"extra"}, nil, 2, `unexpected argument "extra"`},
		{"port in use", []string{"--listen", busy.Addr().String(), "--endpoints", "http://127.0.0.1:1"}, nil, 1, "address already in use"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			var stdout, stderr bytes.Buffer
			code := run(tt.args, &stdout, &stderr)
			out := stderr.String()
			if code != tt.code || !strings.Contains(out, tt.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d and %q", code, out, tt.code, tt.want)
			}
			if lines := strings.Count(strings.TrimRight(out, "\n"), "\n") + 1; lines != 1 || !strings.HasPrefix(out, "coordproxy: ") {
				t.Fatalf("stderr is %d lines, want one line starting with coordproxy: %q", lines, out)
			}
		})
	}
}

func TestParseConfig_flagsOverrideEnvironmentOverDefaults(t *testing.T) {
	t.Setenv("COORDPROXY_LISTEN", "127.0.0.1:1111")
	t.Setenv("COORDPROXY_REQUEST_TIMEOUT", "7s")
	t.Setenv("COORDPROXY_ENDPOINTS", "http://a:1, http://b:2")
	c, err := parseConfig([]string{"--listen", "127.0.0.1:2222"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	pc, _, err := c.proxyConfig()
	if err != nil {
		t.Fatal(err)
	}
	if pc.Listen != "127.0.0.1:2222" || pc.RequestTimeout != 7*time.Second || pc.DialTimeout != 5*time.Second ||
		pc.DataDir != "coordproxy.etcd" || strings.Join(pc.Endpoints, ",") != "http://a:1,http://b:2" {
		t.Fatalf("config %+v", pc)
	}
}

func TestParseConfig_defaults(t *testing.T) {
	c, err := parseConfig(nil, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	pc, level, err := c.proxyConfig()
	if err != nil {
		t.Fatal(err)
	}
	if pc.Listen != "127.0.0.1:23790" || len(pc.Endpoints) != 0 || pc.DataDir != "coordproxy.etcd" || level.String() != "INFO" {
		t.Fatalf("defaults %+v level %v", pc, level)
	}
}

func TestRun_helpExitsZero(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-h"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, flag := range []string{"-endpoints", "-listen", "-data-dir", "-dial-timeout", "-request-timeout", "-shutdown-timeout", "-max-etcd-requests", "-log-level", "COORDPROXY_ENDPOINTS"} {
		if !strings.Contains(stdout.String(), flag) {
			t.Errorf("usage lacks %s:\n%s", flag, stdout.String())
		}
	}
}
