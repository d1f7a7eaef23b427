package proxy_test

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
)

// The README's lists of services — what health reports, what the JSON
// gateway serves — are the services a running proxy registers.
func TestReadme_listsTheServicesTheProxyServes(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	served := proxy.ServedServices(env.Proxy)
	if len(served) < 13 {
		t.Fatalf("served services %v: etcd's 8 and coordproxy.v1's 5 expected", served)
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	health := listed(t, string(readme), "gRPC clients can ask `grpc.health.v1.Health`", "\n\n")
	if !slices.Equal(health, served) {
		t.Errorf("README's health paragraph lists %v;\nthe proxy serves %v", health, served)
	}
	gateway := listed(t, string(readme), "The same address also speaks HTTP/1.1", "\n\n")
	want := proxy.GatewayServices()
	slices.Sort(want)
	if !slices.Equal(gateway, want) {
		t.Errorf("README's gateway paragraph lists %v;\nthe gateway serves %v", gateway, want)
	}
	for _, g := range want {
		if !slices.Contains(served, g) {
			t.Errorf("the gateway serves %s, which no gRPC service of the proxy is", g)
		}
	}
}

// serviceName is a gRPC service name in backquotes: package.Service.
var serviceName = regexp.MustCompile("`((?:[a-z][a-z0-9]*\\.)+[A-Z][A-Za-z]*)`")

// listed is the sorted service names in the README's paragraph that starts
// with start and ends at end; grpc.health.v1.Health itself is not counted.
func listed(t *testing.T, readme, start, end string) []string {
	t.Helper()
	i := strings.Index(readme, start)
	if i < 0 {
		t.Fatalf("README has no paragraph starting %q", start)
	}
	para := readme[i:]
	para = para[:strings.Index(para, end)]
	var names []string
	for _, m := range serviceName.FindAllStringSubmatch(para, -1) {
		if m[1] != "grpc.health.v1.Health" {
			names = append(names, m[1])
		}
	}
	slices.Sort(names)
	return names
}
