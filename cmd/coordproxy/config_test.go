package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/internal/gcheadroom"
	"github.com/coordproxy/coordproxy/proxy"

	"github.com/coordproxy/coordproxy/proxy/proxytest"
)

func TestRun_invalidConfigurationExitsWithOneLine(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	pki := proxytest.NewPKI(t)
	dir := t.TempDir()
	file := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	notPEM := file("not-pem.txt", "hello\n")
	empty := file("empty", "")
	newline := file("newline", "\n")
	secret := file("secret", "s3cret\n")
	missing := filepath.Join(dir, "missing.pem")
	tlsOn := []string{"--cert-file", pki.ServerCert, "--key-file", pki.ServerKey}
	https := []string{"--endpoints", "https://127.0.0.1:1"}
	args := func(parts ...[]string) []string {
		var all []string
		for _, p := range parts {
			all = append(all, p...)
		}
		return all
	}
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
		{"negative drain delay", []string{"--drain-delay", "-1s"}, nil, 2, "invalid --drain-delay -1s: must not be negative"},
		{"drain delay as long as shutdown timeout", nil, map[string]string{"COORDPROXY_DRAIN_DELAY": "10s"}, 2, "invalid --drain-delay 10s: must be shorter than --shutdown-timeout 10s, which includes it"},
		{"bad drain delay env", nil, map[string]string{"COORDPROXY_DRAIN_DELAY": "later"}, 2, `invalid COORDPROXY_DRAIN_DELAY="later"`},
		{"no etcd requests allowed", []string{"--max-etcd-requests", "0"}, nil, 2, "invalid --max-etcd-requests 0: must be positive"},
		{"no request allowed", []string{"--max-request-bytes", "0"}, nil, 2, "invalid --max-request-bytes 0: must be between 1 and 2146959359"},
		{"bad number env", nil, map[string]string{"COORDPROXY_MAX_ETCD_REQUESTS": "many"}, 2, `invalid COORDPROXY_MAX_ETCD_REQUESTS="many"`},
		{"listen without port", []string{"--listen", "localhost"}, nil, 2, `invalid --listen "localhost"`},
		{"listen port out of range", []string{"--listen", "127.0.0.1:70000"}, nil, 2, `invalid --listen "127.0.0.1:70000"`},
		{"log level", []string{"--log-level", "loud"}, nil, 2, `invalid --log-level "loud"`},
		{"log format", []string{"--log-format", "logfmt"}, nil, 2, `invalid --log-format "logfmt": want text or json`},
		{"log format from env", nil, map[string]string{"COORDPROXY_LOG_FORMAT": "JSON"}, 2, `invalid --log-format "JSON": want text or json`},
		{"namespace without trailing slash", []string{"--namespace", "app1"}, nil, 2, `invalid --namespace "app1": must end in "/"`},
		{"unknown flag", []string{"--endpoint", "http://a:1"}, nil, 2, "flag provided but not defined: -endpoint"},
		{"stray argument", []string{"extra"}, nil, 2, `unexpected argument "extra"`},
		{"port in use", []string{"--listen", busy.Addr().String(), "--endpoints", "http://127.0.0.1:1"}, nil, 1, "address already in use"},
		{"http and https endpoints", []string{"--endpoints", "https://a:1,http://b:2"}, nil, 2, `invalid --endpoints: "https://a:1" and "http://b:2" mix http:// and https://`},

		{"cert without key", []string{"--cert-file", pki.ServerCert}, nil, 2, "invalid --cert-file: needs --key-file"},
		{"key without cert", nil, map[string]string{"COORDPROXY_KEY_FILE": pki.ServerKey}, 2, "invalid --key-file: needs --cert-file"},
		{"client cert auth without CA", args(tlsOn, []string{"--client-cert-auth"}), nil, 2, "invalid --client-cert-auth: needs --trusted-ca-file"},
		{"CA without TLS", []string{"--trusted-ca-file", pki.CAFile, "--client-cert-auth"}, nil, 2, "invalid --trusted-ca-file: client certificates need TLS, set --cert-file and --key-file"},
		{"CA without client cert auth", args(tlsOn, []string{"--trusted-ca-file", pki.CAFile}), nil, 2, "invalid --trusted-ca-file: it checks client certificates, set --client-cert-auth to require them"},
		{"cert file missing", []string{"--cert-file", missing, "--key-file", pki.ServerKey}, nil, 2, fmt.Sprintf("invalid --cert-file %q: no such file or directory", missing)},
		{"cert file missing from env", nil, map[string]string{"COORDPROXY_CERT_FILE": missing, "COORDPROXY_KEY_FILE": pki.ServerKey}, 2, fmt.Sprintf("invalid --cert-file %q: no such file or directory", missing)},
		{"cert file not PEM", []string{"--cert-file", notPEM, "--key-file", pki.ServerKey}, nil, 2, fmt.Sprintf("invalid --cert-file %q: no PEM certificate in file", notPEM)},
		{"key given as cert", []string{"--cert-file", pki.ServerKey, "--key-file", pki.ServerKey}, nil, 2, fmt.Sprintf("invalid --cert-file %q: no PEM certificate in file", pki.ServerKey)},
		{"key file not PEM", []string{"--cert-file", pki.ServerCert, "--key-file", notPEM}, nil, 2, fmt.Sprintf("invalid --key-file %q: no PEM private key in file", notPEM)},
		{"key of another cert", []string{"--cert-file", pki.ServerCert, "--key-file", pki.ClientKey}, nil, 2, fmt.Sprintf("invalid --key-file %q: private key does not match public key of the certificate in %q", pki.ClientKey, pki.ServerCert)},
		{"CA file without certificates", args(tlsOn, []string{"--client-cert-auth", "--trusted-ca-file", pki.OtherKey}), nil, 2, fmt.Sprintf("invalid --trusted-ca-file %q: no PEM certificate in file", pki.OtherKey)},
		{"CA file empty", args(tlsOn, []string{"--client-cert-auth", "--trusted-ca-file", empty}), nil, 2, fmt.Sprintf("invalid --trusted-ca-file %q: no PEM certificate in file", empty)},

		{"etcd cert without key", args(https, []string{"--etcd-cert", pki.ClientCert}), nil, 2, "invalid --etcd-cert: needs --etcd-key"},
		{"etcd key without cert", args(https, []string{"--etcd-key", pki.ClientKey}), nil, 2, "invalid --etcd-key: needs --etcd-cert"},
		{"etcd TLS with http endpoints", []string{"--endpoints", "http://127.0.0.1:1", "--etcd-cacert", pki.CAFile}, nil, 2, "invalid --etcd-cacert: etcd TLS needs https:// --endpoints"},
		{"etcd TLS in dev mode", []string{"--etcd-cert", pki.ClientCert, "--etcd-key", pki.ClientKey}, nil, 2, "invalid --etcd-cert: etcd TLS needs https:// --endpoints"},
		{"etcd CA not PEM", args(https, []string{"--etcd-cacert", notPEM}), nil, 2, fmt.Sprintf("invalid --etcd-cacert %q: no PEM certificate in file", notPEM)},
		{"etcd cert not PEM", args(https, []string{"--etcd-cert", notPEM, "--etcd-key", pki.ClientKey}), nil, 2, fmt.Sprintf("invalid --etcd-cert %q: no PEM certificate in file", notPEM)},
		{"etcd CA missing", nil, map[string]string{"COORDPROXY_ENDPOINTS": "https://127.0.0.1:1", "COORDPROXY_ETCD_CACERT": missing}, 2, fmt.Sprintf("invalid --etcd-cacert %q: no such file or directory", missing)},
		{"etcd key of another cert", args(https, []string{"--etcd-cert", pki.ClientCert, "--etcd-key", pki.OtherKey}), nil, 2, fmt.Sprintf("invalid --etcd-key %q: private key does not match public key", pki.OtherKey)},

		{"password and password file", []string{"--etcd-username", "u", "--etcd-password", "p", "--etcd-password-file", secret}, nil, 2, "invalid --etcd-password-file: --etcd-password is set too, give only one"},
		{"username without password", []string{"--etcd-username", "u"}, nil, 2, "invalid --etcd-username: needs --etcd-password or --etcd-password-file"},
		{"password without username", nil, map[string]string{"COORDPROXY_ETCD_PASSWORD": "p"}, 2, "invalid --etcd-password: needs --etcd-username"},
		{"password file without username", []string{"--etcd-password-file", secret}, nil, 2, "invalid --etcd-password-file: needs --etcd-username"},
		{"password file empty", []string{"--etcd-username", "u", "--etcd-password-file", empty}, nil, 2, fmt.Sprintf("invalid --etcd-password-file %q: file is empty", empty)},
		{"password file only a newline", []string{"--etcd-username", "u", "--etcd-password-file", newline}, nil, 2, fmt.Sprintf("invalid --etcd-password-file %q: file is empty", newline)},
		{"password file missing", []string{"--etcd-username", "u", "--etcd-password-file", missing}, nil, 2, fmt.Sprintf("invalid --etcd-password-file %q: no such file or directory", missing)},
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
	t.Setenv("COORDPROXY_DRAIN_DELAY", "1s")
	t.Setenv("COORDPROXY_PPROF", "true")
	c, err := parseConfig([]string{"--listen", "127.0.0.1:2222", "--drain-delay", "5s"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	pc, _, err := c.proxyConfig()
	if err != nil {
		t.Fatal(err)
	}
	if pc.Listen != "127.0.0.1:2222" || pc.RequestTimeout != 7*time.Second || pc.DialTimeout != 5*time.Second || pc.DrainDelay != 5*time.Second || !pc.Pprof ||
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
	if pc.Listen != "127.0.0.1:23790" || len(pc.Endpoints) != 0 || pc.DataDir != "coordproxy.etcd" || level.String() != "INFO" || pc.DrainDelay != 0 || pc.Pprof {
		t.Fatalf("defaults %+v level %v", pc, level)
	}
}

func TestRun_helpExitsZero(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-h"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, flag := range []string{"-endpoints", "-listen", "-data-dir", "-dial-timeout", "-request-timeout", "-shutdown-timeout", "-drain-delay", "-max-etcd-requests", "-log-level", "-log-format", "-pprof", "COORDPROXY_ENDPOINTS",
		"-cert-file", "-key-file", "-trusted-ca-file", "-client-cert-auth", "-etcd-cacert", "-etcd-cert", "-etcd-key", "-etcd-username", "-etcd-password", "-etcd-password-file"} {
		if !strings.Contains(stdout.String(), flag) {
			t.Errorf("usage lacks %s:\n%s", flag, stdout.String())
		}
	}
}

func TestRun_helpDoesNotShowThePassword(t *testing.T) {
	t.Setenv("COORDPROXY_ETCD_USERNAME", "proxy-user")
	t.Setenv("COORDPROXY_ETCD_PASSWORD", "s3cret-from-env")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-h"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if !strings.Contains(stdout.String(), `(default "proxy-user")`) || strings.Contains(stdout.String(), "s3cret-from-env") {
		t.Fatalf("usage shows the password or not the other values from the environment:\n%s", stdout.String())
	}
}

func TestParseConfig_tlsAndEtcdAuth(t *testing.T) {
	pki := proxytest.NewPKI(t)
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("s3cret\n\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("COORDPROXY_CLIENT_CERT_AUTH", "true")
	t.Setenv("COORDPROXY_ETCD_PASSWORD_FILE", secret)
	c, err := parseConfig([]string{
		"--endpoints", "https://127.0.0.1:1",
		"--cert-file", pki.ServerCert, "--key-file", pki.ServerKey, "--trusted-ca-file", pki.CAFile,
		"--etcd-cacert", pki.CAFile, "--etcd-cert", pki.ClientCert, "--etcd-key", pki.ClientKey,
		"--etcd-username", "coordproxy",
	}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	pc, _, err := c.proxyConfig()
	if err != nil {
		t.Fatal(err)
	}
	if pc.CertFile != pki.ServerCert || pc.KeyFile != pki.ServerKey || pc.TrustedCAFile != pki.CAFile || !pc.ClientCertAuth ||
		pc.EtcdCACert != pki.CAFile || pc.EtcdCert != pki.ClientCert || pc.EtcdKey != pki.ClientKey ||
		pc.EtcdUsername != "coordproxy" || pc.EtcdPassword != "s3cret\n" {
		t.Fatalf("config %+v", pc)
	}
}

func TestRun_wrongEtcdPasswordExitsWithOneLine(t *testing.T) {
	etcd := proxytest.StartEtcd(t)
	proxytest.EnableAuth(t, etcd.URL, "coordproxy", "right", "locks/")
	var stdout, stderr bytes.Buffer
	code := run([]string{"--endpoints", etcd.URL, "--listen", "127.0.0.1:0", "--etcd-username", "coordproxy", "--etcd-password", "wrong"}, &stdout, &stderr)
	out := stderr.String()
	if code != 1 || !strings.Contains(out, "authentication failed") || strings.Count(strings.TrimRight(out, "\n"), "\n") != 0 {
		t.Fatalf("exit %d, stderr %q; want exit 1 and one line with etcd's authentication error", code, out)
	}
}

// The flags' documented defaults (config.go's default tags, which the README
// table and the deploy files are checked against) are proxy.DefaultConfig's,
// which every layer below takes its defaults from; settings without a flag
// are left zero here and so take DefaultConfig's in proxy.New.
func TestConfig_defaultsAreProxyDefaults(t *testing.T) {
	c, err := parseConfig(nil, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := c.proxyConfig()
	if err != nil {
		t.Fatal(err)
	}
	want := proxy.DefaultConfig()
	for _, f := range []struct {
		name      string
		got, want any
	}{
		{"listen", got.Listen, want.Listen},
		{"data-dir", got.DataDir, want.DataDir},
		{"dial-timeout", got.DialTimeout, want.DialTimeout},
		{"request-timeout", got.RequestTimeout, want.RequestTimeout},
		{"shutdown-timeout", got.ShutdownTimeout, want.ShutdownTimeout},
		{"drain-delay", got.DrainDelay, want.DrainDelay},
		{"handshake-timeout", got.HandshakeTimeout, want.HandshakeTimeout},
		{"grpc-keepalive-interval", got.KeepaliveInterval, want.KeepaliveInterval},
		{"grpc-keepalive-timeout", got.KeepaliveTimeout, want.KeepaliveTimeout},
		{"session-lock-delay", got.SessionLockDelay, want.SessionLockDelay},
		{"max-etcd-requests", got.MaxEtcdRequests, want.MaxEtcdRequests},
		{"max-request-bytes", got.MaxRequestBytes, want.MaxRequestBytes},
		{"namespace", got.Namespace, want.Namespace},
		{"gc-headroom-bytes", uint64(c.GCHeadroomBytes), uint64(gcheadroom.Default)}, // coordbench's proxy uses the package's
	} {
		if f.got != f.want {
			t.Errorf("--%s defaults to %v, proxy.DefaultConfig to %v", f.name, f.got, f.want)
		}
	}
	if got.ObserveBuffer != 0 || got.QueueLinger != 0 || got.HoldCheck != 0 {
		t.Errorf("settings without a flag are set (%d, %s, %s): they must come from proxy.DefaultConfig", got.ObserveBuffer, got.QueueLinger, got.HoldCheck)
	}
}
