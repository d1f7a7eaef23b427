package deploy

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// haproxySection is one section of haproxy.cfg: its keyword (defaults,
// frontend, backend...), name, and the words of each line.
type haproxySection struct {
	kind, name string
	lines      [][]string
}

func parseHAProxy(t *testing.T) []haproxySection {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("compose", "haproxy.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	var sections []haproxySection
	for _, l := range strings.Split(string(data), "\n") {
		indented := strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t")
		l, _, _ = strings.Cut(l, "#")
		words := strings.Fields(l)
		if len(words) == 0 {
			continue
		}
		if !indented {
			s := haproxySection{kind: words[0]}
			if len(words) > 1 {
				s.name = words[1]
			}
			sections = append(sections, s)
			continue
		}
		if len(sections) == 0 {
			t.Fatalf("haproxy.cfg: %q outside any section", l)
		}
		sections[len(sections)-1].lines = append(sections[len(sections)-1].lines, words)
	}
	return sections
}

func section(sections []haproxySection, kind, name string) *haproxySection {
	for i := range sections {
		if sections[i].kind == kind && sections[i].name == name {
			return &sections[i]
		}
	}
	return nil
}

// lookup returns the words after prefix on the section's first line that
// starts with prefix, falling back on the defaults section.
func (s *haproxySection) lookup(defaults *haproxySection, prefix ...string) []string {
	for _, sec := range []*haproxySection{s, defaults} {
		if sec == nil {
			continue
		}
		for _, l := range sec.lines {
			if len(l) >= len(prefix) && slices.Equal(l[:len(prefix)], prefix) {
				return l[len(prefix):]
			}
		}
	}
	return nil
}

// servers maps each server line's name to its words after the name.
func (s *haproxySection) servers() map[string][]string {
	m := map[string][]string{}
	for _, l := range s.lines {
		if l[0] == "server" && len(l) >= 3 {
			m[l[1]] = l[2:]
		}
	}
	return m
}

// checksReady: the backend checks with GET /readyz and wants 200.
func (s *haproxySection) checksReady(defaults *haproxySection) bool {
	get := false
	for _, l := range s.lines {
		text := strings.Join(l, " ")
		get = get || strings.HasPrefix(text, "option httpchk GET /readyz") ||
			(strings.HasPrefix(text, "http-check send") && strings.Contains(text, "meth GET") && strings.Contains(text, "uri /readyz"))
	}
	return get && s.lookup(defaults, "option", "httpchk") != nil && slices.Equal(s.lookup(defaults, "http-check", "expect"), []string{"status", "200"})
}

// haproxyDuration reads an HAProxy time: milliseconds unless suffixed.
func haproxyDuration(t *testing.T, v []string) time.Duration {
	t.Helper()
	if len(v) != 1 {
		t.Fatalf("time %q", v)
	}
	s := v[0]
	i := strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	num, unit := s, "ms"
	if i >= 0 {
		num, unit = s[:i], s[i:]
	}
	n, err := strconv.Atoi(num)
	units := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second, "m": time.Minute, "h": time.Hour, "d": 24 * time.Hour}
	if err != nil || units[unit] == 0 {
		t.Fatalf("time %q", s)
	}
	return time.Duration(n) * units[unit]
}

func TestHAProxy_routesGRPCOverHTTP2AndTheRestOverHTTP1ToEveryProxy(t *testing.T) {
	c := loadCompose(t)
	sections := parseHAProxy(t)
	defaults := section(sections, "defaults", "")
	if defaults == nil {
		t.Fatal("haproxy.cfg has no unnamed defaults section")
	}
	var fe *haproxySection
	for i := range sections {
		if sections[i].kind != "frontend" {
			continue
		}
		for _, l := range sections[i].lines {
			if l[0] == "bind" && len(l) >= 2 && strings.HasSuffix(l[1], ":"+strconv.Itoa(int(c.lb[0].Ports[0].Target))) {
				fe = &sections[i]
			}
		}
	}
	if fe == nil {
		t.Fatalf("no frontend binds the load balancer's published port %d", c.lb[0].Ports[0].Target)
	}
	if mode := fe.lookup(defaults, "mode"); !slices.Equal(mode, []string{"http"}) {
		t.Fatalf("frontend %s is in mode %v; this test knows the HTTP mode setup", fe.name, mode)
	}
	if proto := fe.lookup(nil, "bind"); slices.Contains(proto, "proto") {
		t.Errorf("frontend %s: bind %v forces one protocol; gRPC needs HTTP/2 and the JSON gateway HTTP/1.1", fe.name, proto)
	}
	grpcName := ""
	for _, l := range fe.lines {
		text := strings.Join(l, " ")
		if l[0] == "use_backend" && len(l) >= 2 && strings.Contains(text, "req.hdr(content-type)") && strings.Contains(text, "application/grpc") {
			grpcName = l[1]
		}
	}
	httpName := strings.Join(fe.lookup(nil, "default_backend"), " ")
	grpc, http := section(sections, "backend", grpcName), section(sections, "backend", httpName)
	if grpc == nil || http == nil || grpc == http {
		t.Fatalf("frontend %s: want use_backend <gRPC backend> if content-type is application/grpc, and default_backend <HTTP/1.1 backend>; got %q and %q", fe.name, grpcName, httpName)
	}

	var proxies []string
	for _, p := range c.proxies {
		_, port, _ := net.SplitHostPort(env(p)["COORDPROXY_LISTEN"])
		proxies = append(proxies, net.JoinHostPort(p.Name, port))
	}
	slices.Sort(proxies)
	for _, b := range []*haproxySection{grpc, http} {
		var addrs []string
		for name, words := range b.servers() {
			addrs = append(addrs, words[0])
			h2 := strings.Contains(" "+strings.Join(words, " ")+" ", " proto h2 ")
			if b == grpc && !h2 {
				t.Errorf("backend %s: server %s lacks proto h2: gRPC needs HTTP/2 to the proxy", b.name, name)
			}
			if b == http && h2 {
				t.Errorf("backend %s: server %s has proto h2: the proxy serves HTTP/2 only to gRPC", b.name, name)
			}
		}
		slices.Sort(addrs)
		if !slices.Equal(addrs, proxies) {
			t.Errorf("backend %s: servers %v; want every proxy of docker-compose.yml: %v", b.name, addrs, proxies)
		}
	}

	// Health: the HTTP/1.1 backend checks /readyz; the gRPC backend follows
	// it, or checks /readyz itself over HTTP/1.1 (over HTTP/2 the check would
	// reach the proxy's gRPC server).
	if !http.checksReady(defaults) {
		t.Errorf("backend %s does not check GET /readyz expecting status 200", http.name)
	}
	for name, words := range http.servers() {
		if !slices.Contains(words, "check") {
			t.Errorf("backend %s: server %s is not checked", http.name, name)
		}
	}
	for name, words := range grpc.servers() {
		i := slices.Index(words, "track")
		switch {
		case i >= 0 && i+1 < len(words):
			be, srv, _ := strings.Cut(words[i+1], "/")
			tracked := section(sections, "backend", be)
			if tracked == nil || !tracked.checksReady(defaults) || len(tracked.servers()[srv]) == 0 || tracked.servers()[srv][0] != words[0] {
				t.Errorf("backend %s: server %s tracks %s, which is not the same proxy checked on /readyz", grpc.name, name, words[i+1])
			}
		case slices.Contains(words, "check"):
			if !grpc.checksReady(defaults) || !strings.Contains(strings.Join(words, " "), "check-proto h1") {
				t.Errorf("backend %s: server %s must check /readyz with check-proto h1", grpc.name, name)
			}
		default:
			t.Errorf("backend %s: server %s is neither checked nor tracking a checked server", grpc.name, name)
		}
	}
}

func TestHAProxy_timeoutsOutlastBlockingCallsAndStreams(t *testing.T) {
	sections := parseHAProxy(t)
	defaults := section(sections, "defaults", "")
	for _, s := range sections {
		var want []string
		switch s.kind {
		case "frontend":
			want = []string{"client"}
		case "backend":
			want = []string{"server", "tunnel"}
		default:
			continue
		}
		for _, w := range want {
			v := s.lookup(defaults, "timeout", w)
			if v == nil {
				t.Errorf("%s %s has no timeout %s", s.kind, s.name, w)
				continue
			}
			if d := haproxyDuration(t, v); d < time.Hour {
				t.Errorf("%s %s: timeout %s %s; want an hour or more: a waiting Lock sends nothing until granted", s.kind, s.name, w, d)
			}
		}
	}
}
