package deploy

import (
	"context"
	"maps"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

// etcdImage is the repository of etcd's official image; its tag must be the
// etcd version the proxy is built and tested against.
const etcdImage = "gcr.io/etcd-development/etcd"

// composeFile is docker-compose.yml as Docker Compose loads it (merge keys,
// extension fields and relative paths resolved), split by role.
type composeFile struct {
	project *types.Project
	etcd    []types.ServiceConfig // image etcdImage:*
	proxies []types.ServiceConfig // built from the Dockerfile
	lb      []types.ServiceConfig // image haproxy:*
}

func loadCompose(t *testing.T) composeFile {
	t.Helper()
	opts, err := cli.NewProjectOptions([]string{filepath.Join(root, "docker-compose.yml")}, cli.WithWorkingDirectory(root))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	c := composeFile{project: p}
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for n := range p.Services {
			if !yield(n) {
				return
			}
		}
	}) {
		s := p.Services[name]
		switch {
		case strings.HasPrefix(s.Image, etcdImage+":"):
			c.etcd = append(c.etcd, s)
		case s.Build != nil:
			c.proxies = append(c.proxies, s)
		case strings.HasPrefix(s.Image, "haproxy:"):
			c.lb = append(c.lb, s)
		default:
			t.Errorf("service %s (image %q) is none of etcd, coordproxy, load balancer", name, s.Image)
		}
	}
	if len(c.etcd) != 3 || len(c.proxies) != 2 || len(c.lb) != 1 {
		t.Fatalf("docker-compose.yml has %d etcd, %d coordproxy, %d load balancer services; want 3, 2, 1", len(c.etcd), len(c.proxies), len(c.lb))
	}
	return c
}

// flags reads a command line's --name=value and --name value arguments.
func flags(args []string) map[string]string {
	m := map[string]string{}
	for i := 0; i < len(args); i++ {
		name, ok := strings.CutPrefix(args[i], "--")
		if !ok {
			continue
		}
		if k, v, ok := strings.Cut(name, "="); ok {
			m[k] = v
		} else if i+1 < len(args) && !strings.HasPrefix(args[i+1], "--") {
			m[name] = args[i+1]
			i++
		} else {
			m[name] = ""
		}
	}
	return m
}

func env(s types.ServiceConfig) map[string]string {
	m := map[string]string{}
	for k, v := range s.Environment {
		if v != nil {
			m[k] = *v
		}
	}
	return m
}

// etcdClientURLs maps each etcd service to the client URL it advertises.
func (c composeFile) etcdClientURLs(t *testing.T) map[string]string {
	t.Helper()
	urls := map[string]string{}
	for _, s := range c.etcd {
		urls[s.Name] = flags(s.Command)["advertise-client-urls"]
	}
	return urls
}

func TestCompose_etcdMembersFormOneStaticClusterOfTheTestedVersion(t *testing.T) {
	c := loadCompose(t)
	want := etcdImage + ":" + goModField(t, "go.etcd.io/etcd/client/v3")
	if want != etcdImage+":v3.7.3" {
		t.Errorf("go.mod's etcd client is %s; this setup was written for v3.7.3: check the flags still hold", want)
	}
	peers := map[string]string{}
	token := ""
	for _, s := range c.etcd {
		if s.Image != want {
			t.Errorf("%s runs %s; want %s, the version coordproxy is built against", s.Name, s.Image, want)
		}
		f := flags(s.Command)
		if len(s.Command) == 0 || s.Command[0] != "/usr/local/bin/etcd" {
			t.Errorf("%s: command %q does not start with /usr/local/bin/etcd", s.Name, s.Command)
		}
		if f["name"] != s.Name {
			t.Errorf("%s: --name=%q; want the service name, which other containers resolve", s.Name, f["name"])
		}
		peer := "http://" + s.Name + ":2380"
		if f["initial-advertise-peer-urls"] != peer {
			t.Errorf("%s: --initial-advertise-peer-urls=%q; want %s", s.Name, f["initial-advertise-peer-urls"], peer)
		}
		peers[s.Name] = peer
		for _, u := range []struct{ listen, advertise, port string }{{"listen-peer-urls", "initial-advertise-peer-urls", "2380"}, {"listen-client-urls", "advertise-client-urls", "2379"}} {
			adv, err := url.Parse(f[u.advertise])
			if err != nil || adv.Hostname() != s.Name || adv.Port() != u.port {
				t.Errorf("%s: --%s=%q; want http://%s:%s", s.Name, u.advertise, f[u.advertise], s.Name, u.port)
			}
			if f[u.listen] != "http://0.0.0.0:"+u.port {
				t.Errorf("%s: --%s=%q; want http://0.0.0.0:%s, reachable from the other containers", s.Name, u.listen, f[u.listen], u.port)
			}
		}
		if f["initial-cluster-state"] != "new" {
			t.Errorf("%s: --initial-cluster-state=%q; want new", s.Name, f["initial-cluster-state"])
		}
		if token == "" {
			token = f["initial-cluster-token"]
		}
		if f["initial-cluster-token"] == "" || f["initial-cluster-token"] != token {
			t.Errorf("%s: --initial-cluster-token=%q; want one token, the same for every member", s.Name, f["initial-cluster-token"])
		}
		dataOnVolume := false
		for _, v := range s.Volumes {
			dataOnVolume = dataOnVolume || (v.Type == types.VolumeTypeVolume && f["data-dir"] != "" && strings.HasPrefix(f["data-dir"]+"/", strings.TrimSuffix(v.Target, "/")+"/"))
		}
		if !dataOnVolume {
			t.Errorf("%s: --data-dir=%q is on no named volume (volumes %+v)", s.Name, f["data-dir"], s.Volumes)
		}
		hc := s.HealthCheck
		if hc == nil || hc.Disable || !slices.Contains(hc.Test, "/usr/local/bin/etcdctl") || !strings.Contains(strings.Join(hc.Test, " "), "endpoint health") ||
			!slices.Contains(hc.Test, "--endpoints=http://127.0.0.1:2379") {
			t.Errorf("%s: healthcheck %v; want etcdctl --endpoints=http://127.0.0.1:2379 endpoint health", s.Name, healthTest(hc))
		}
	}
	for _, s := range c.etcd {
		cluster := map[string]string{}
		for _, member := range strings.Split(flags(s.Command)["initial-cluster"], ",") {
			name, u, _ := strings.Cut(member, "=")
			cluster[name] = u
		}
		if !maps.Equal(cluster, peers) {
			t.Errorf("%s: --initial-cluster is %v; want every member with its peer URL: %v", s.Name, cluster, peers)
		}
	}
	if vols := keys(c.project.Volumes); len(vols) != len(c.etcd) {
		t.Errorf("volumes %v; want one per etcd member", vols)
	}
}

func TestCompose_proxiesUseEveryMemberAndWaitForAHealthyCluster(t *testing.T) {
	c := loadCompose(t)
	absRoot, err := filepath.Abs(root)
	if err != nil {
		t.Fatal(err)
	}
	var etcdURLs []string
	for _, u := range c.etcdClientURLs(t) {
		etcdURLs = append(etcdURLs, u)
	}
	slices.Sort(etcdURLs)
	entrypoint := imageEntrypoint(t)
	for _, s := range c.proxies {
		if s.Build.Context != absRoot || s.Build.Dockerfile != "Dockerfile" {
			t.Errorf("%s builds %s from %s; want the repository's Dockerfile", s.Name, s.Build.Dockerfile, s.Build.Context)
		}
		e := env(s)
		endpoints := strings.Split(e["COORDPROXY_ENDPOINTS"], ",")
		slices.Sort(endpoints)
		if !slices.Equal(endpoints, etcdURLs) {
			t.Errorf("%s: COORDPROXY_ENDPOINTS=%q; want every member's client URL: %v", s.Name, e["COORDPROXY_ENDPOINTS"], etcdURLs)
		}
		host, port, err := net.SplitHostPort(e["COORDPROXY_LISTEN"])
		if err != nil || host != "0.0.0.0" || port != "23790" {
			t.Errorf("%s: COORDPROXY_LISTEN=%q; want 0.0.0.0:23790", s.Name, e["COORDPROXY_LISTEN"])
		}
		probe := append(slices.Clone(entrypoint), "probe", "http://127.0.0.1:"+port+"/readyz")
		if hc := s.HealthCheck; hc == nil || hc.Disable || !slices.Equal(hc.Test, append([]string{"CMD"}, probe...)) {
			t.Errorf("%s: healthcheck %v; want [CMD %s]", s.Name, healthTest(hc), strings.Join(probe, " "))
		} else if hc.Timeout == nil || time.Duration(*hc.Timeout) <= defaultProbeTimeout {
			t.Errorf("%s: healthcheck timeout %v; want more than the probe's own %s", s.Name, hc.Timeout, defaultProbeTimeout)
		}
		for _, m := range c.etcd {
			if d, ok := s.DependsOn[m.Name]; !ok || d.Condition != types.ServiceConditionHealthy {
				t.Errorf("%s: depends_on %s %+v; want condition service_healthy", s.Name, m.Name, d)
			}
		}
		stop := durationSetting(t, e, "COORDPROXY_DRAIN_DELAY") + durationSetting(t, e, "COORDPROXY_SHUTDOWN_TIMEOUT")
		if s.StopGracePeriod == nil || time.Duration(*s.StopGracePeriod) <= stop {
			t.Errorf("%s: stop_grace_period %v; want more than drain delay plus shutdown timeout, %s", s.Name, s.StopGracePeriod, stop)
		}
	}
}

// defaultProbeTimeout is `coordproxy probe`'s default --timeout, the
// constant of the same name in cmd/coordproxy/probe.go.
const defaultProbeTimeout = 3 * time.Second

func TestCompose_loadBalancerPublishesTheProxyPortAndWaitsForHealthyProxies(t *testing.T) {
	c := loadCompose(t)
	lb := c.lb[0]
	published := false
	for _, p := range lb.Ports {
		published = published || (p.Published == "23790" && p.Target == 23790 && p.HostIP == "")
	}
	if !published {
		t.Errorf("%s: ports %+v; want 23790:23790 on every host address", lb.Name, lb.Ports)
	}
	cfg, err := filepath.Abs(filepath.Join("compose", "haproxy.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	mounted := false
	for _, v := range lb.Volumes {
		mounted = mounted || (v.Type == types.VolumeTypeBind && v.Source == cfg && v.Target == "/usr/local/etc/haproxy/haproxy.cfg" && v.ReadOnly)
	}
	if !mounted {
		t.Errorf("%s: volumes %+v; want %s read-only at /usr/local/etc/haproxy/haproxy.cfg", lb.Name, lb.Volumes, cfg)
	}
	for _, p := range c.proxies {
		if d, ok := lb.DependsOn[p.Name]; !ok || d.Condition != types.ServiceConditionHealthy {
			t.Errorf("%s: depends_on %s %+v; want condition service_healthy", lb.Name, p.Name, d)
		}
	}
	// Compose can wait for service_healthy only on services with a check.
	for _, s := range c.project.Services {
		for dep, d := range s.DependsOn {
			if hc := c.project.Services[dep].HealthCheck; d.Condition == types.ServiceConditionHealthy && (hc == nil || hc.Disable || len(hc.Test) == 0) {
				t.Errorf("%s waits for %s to be healthy, which has no healthcheck", s.Name, dep)
			}
		}
	}
}

func healthTest(hc *types.HealthCheckConfig) any {
	if hc == nil || hc.Disable {
		return "none"
	}
	return hc.Test
}
