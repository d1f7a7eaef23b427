package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/proxy"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// manifests are the objects of deploy/kubernetes, each decoded strictly into
// its k8s.io/api type, with the file it came from.
type manifests struct {
	deployments []located[*appsv1.Deployment]
	services    []located[*corev1.Service]
	pdbs        []located[*policyv1.PodDisruptionBudget]
	secrets     []located[*corev1.Secret]
}

type located[T any] struct {
	file string
	obj  T
}

func loadManifests(t *testing.T) manifests {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("kubernetes", "*"))
	if err != nil {
		t.Fatal(err)
	}
	var m manifests
	for _, file := range files {
		if filepath.Ext(file) != ".yaml" {
			t.Errorf("%s: every manifest is a .yaml file", file)
			continue
		}
		f, err := os.Open(file)
		if err != nil {
			t.Fatal(err)
		}
		r := utilyaml.NewYAMLReader(bufio.NewReader(f))
		for n := 1; ; n++ {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			if err := m.add(file, doc); err != nil {
				t.Errorf("%s, document %d: %v", file, n, err)
			}
		}
		f.Close()
	}
	if len(m.deployments) == 0 {
		t.Fatalf("no Deployment in %v", files)
	}
	return m
}

// add decodes doc strictly (unknown or duplicate fields fail) into the type
// of its apiVersion and kind.
func (m *manifests) add(file string, doc []byte) error {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return err
	}
	if tm.Kind == "" && len(bytes.TrimSpace(stripComments(doc))) == 0 {
		return nil // a document of comments only
	}
	var obj any
	switch tm.APIVersion + " " + tm.Kind {
	case "apps/v1 Deployment":
		d := &appsv1.Deployment{}
		m.deployments, obj = append(m.deployments, located[*appsv1.Deployment]{file, d}), d
	case "v1 Service":
		s := &corev1.Service{}
		m.services, obj = append(m.services, located[*corev1.Service]{file, s}), s
	case "policy/v1 PodDisruptionBudget":
		p := &policyv1.PodDisruptionBudget{}
		m.pdbs, obj = append(m.pdbs, located[*policyv1.PodDisruptionBudget]{file, p}), p
	case "v1 Secret":
		s := &corev1.Secret{}
		m.secrets, obj = append(m.secrets, located[*corev1.Secret]{file, s}), s
	default:
		return fmt.Errorf("apiVersion %q kind %q: not a kind this test knows", tm.APIVersion, tm.Kind)
	}
	return yaml.UnmarshalStrict(doc, obj)
}

func stripComments(doc []byte) []byte {
	var out []byte
	for _, l := range bytes.Split(doc, []byte("\n")) {
		if t := bytes.TrimSpace(l); len(t) > 0 && t[0] != '#' && !bytes.Equal(t, []byte("---")) {
			out = append(out, l...)
		}
	}
	return out
}

// proxyContainer is the container named coordproxy of a pod template: a
// container, or a native sidecar (an init container that keeps running).
func proxyContainer(t *testing.T, spec *corev1.PodSpec) *corev1.Container {
	t.Helper()
	var found []*corev1.Container
	for i := range spec.Containers {
		if spec.Containers[i].Name == "coordproxy" {
			found = append(found, &spec.Containers[i])
		}
	}
	for i := range spec.InitContainers {
		c := &spec.InitContainers[i]
		if c.Name != "coordproxy" {
			continue
		}
		if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
			t.Errorf("init container coordproxy lacks restartPolicy: Always: the pod would wait for it to exit")
		}
		found = append(found, c)
	}
	if len(found) != 1 {
		t.Fatalf("pod has %d containers named coordproxy; want 1", len(found))
	}
	return found[0]
}

func seconds(s *int64) string {
	if s == nil {
		return "unset (30)"
	}
	return strconv.FormatInt(*s, 10)
}

func containerEnv(t *testing.T, c *corev1.Container) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil {
			t.Errorf("container %s: %s comes from elsewhere; this test reads only plain values", c.Name, e.Name)
		}
		m[e.Name] = e.Value
	}
	return m
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// probeTarget is where a probe goes: over the pod's IP for httpGet, from
// inside the container for `coordproxy probe URL`; and how long the command
// itself waits (0 for httpGet).
type probeTarget struct {
	viaPodIP bool
	host     string
	port     int
	path     string
	wait     time.Duration
}

func targetOf(t *testing.T, c *corev1.Container, p *corev1.Probe, entrypoint []string) (probeTarget, error) {
	t.Helper()
	switch {
	case p.HTTPGet != nil:
		g := p.HTTPGet
		if g.Scheme != "" && g.Scheme != corev1.URISchemeHTTP {
			return probeTarget{}, fmt.Errorf("httpGet scheme %s; the proxy serves plain HTTP", g.Scheme)
		}
		port, err := containerPort(c, g.Port)
		return probeTarget{viaPodIP: g.Host == "", host: g.Host, port: port, path: g.Path}, err
	case p.Exec != nil:
		cmd := p.Exec.Command
		if len(cmd) < len(entrypoint)+2 || !slices.Equal(cmd[:len(entrypoint)], entrypoint) || cmd[len(entrypoint)] != "probe" {
			return probeTarget{}, fmt.Errorf("exec %q is not %s probe [--timeout D] URL", cmd, strings.Join(entrypoint, " "))
		}
		args := cmd[len(entrypoint)+1:]
		wait := defaultProbeTimeout
		if len(args) == 3 && args[0] == "--timeout" {
			d, err := time.ParseDuration(args[1])
			if err != nil {
				return probeTarget{}, err
			}
			wait, args = d, args[2:]
		}
		if len(args) != 1 {
			return probeTarget{}, fmt.Errorf("exec %q: want one URL", cmd)
		}
		u, err := url.Parse(args[0])
		if err != nil || u.Scheme != "http" {
			return probeTarget{}, fmt.Errorf("exec %q: want an http:// URL", cmd)
		}
		port, err := strconv.Atoi(u.Port())
		return probeTarget{host: u.Hostname(), port: port, path: u.Path, wait: wait}, err
	}
	return probeTarget{}, errors.New("neither httpGet nor exec")
}

// containerPort resolves a port number or the name of one of c's ports.
func containerPort(c *corev1.Container, p intstr.IntOrString) (int, error) {
	if p.Type == intstr.Int {
		return p.IntValue(), nil
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("container %s has no port named %q", c.Name, p.StrVal)
}

func TestKubernetes_proxyContainersAreProbedSecuredAndStoppedGracefully(t *testing.T) {
	m := loadManifests(t)
	entrypoint := imageEntrypoint(t)
	secrets := map[string]*corev1.Secret{}
	for _, s := range m.secrets {
		secrets[s.obj.Name] = s.obj
	}
	for _, d := range m.deployments {
		t.Run(filepath.Base(d.file)+"/"+d.obj.Name, func(t *testing.T) {
			tpl := d.obj.Spec.Template
			sel, err := metav1.LabelSelectorAsSelector(d.obj.Spec.Selector)
			if err != nil || sel.Empty() || !sel.Matches(labels.Set(tpl.Labels)) {
				t.Errorf("selector %v does not select the pod template's labels %v", d.obj.Spec.Selector, tpl.Labels)
			}
			pod := &tpl.Spec
			c := proxyContainer(t, pod)
			e := containerEnv(t, c)

			endpoints, _ := setting(t, e, "COORDPROXY_ENDPOINTS")
			if endpoints == "" {
				t.Error("COORDPROXY_ENDPOINTS is empty: dev mode, an etcd inside the pod")
			}
			listen, _ := setting(t, e, "COORDPROXY_LISTEN")
			if _, ok := e["COORDPROXY_LISTEN"]; !ok {
				t.Error("COORDPROXY_LISTEN is not set: say where the proxy listens, the probes and ports depend on it")
			}
			host, portText, err := net.SplitHostPort(listen)
			port, _ := strconv.Atoi(portText)
			if err != nil {
				t.Fatalf("COORDPROXY_LISTEN=%q: %v", listen, err)
			}
			for _, cp := range c.Ports {
				if int(cp.ContainerPort) != port {
					t.Errorf("container port %s %d is not the listen port %d", cp.Name, cp.ContainerPort, port)
				}
			}
			if !loopback(host) && !slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool { return int(cp.ContainerPort) == port }) {
				t.Errorf("listens on %s but declares no container port %d", listen, port)
			}

			for _, pr := range []struct {
				name  string
				probe *corev1.Probe
				paths []string
			}{
				{"readinessProbe", c.ReadinessProbe, []string{"/readyz"}},
				{"livenessProbe", c.LivenessProbe, []string{"/healthz"}},
				{"startupProbe", c.StartupProbe, []string{"/healthz", "/readyz"}},
			} {
				if pr.probe == nil {
					if pr.name != "startupProbe" {
						t.Errorf("no %s", pr.name)
					}
					continue
				}
				tg, err := targetOf(t, c, pr.probe, entrypoint)
				if err != nil {
					t.Errorf("%s: %v", pr.name, err)
					continue
				}
				if !slices.Contains(pr.paths, tg.path) || tg.port != port {
					t.Errorf("%s goes to port %d path %s; want the listen port %d and %v", pr.name, tg.port, tg.path, port, pr.paths)
				}
				if tg.viaPodIP && loopback(host) {
					t.Errorf("%s: the kubelet's httpGet comes to the pod's IP, and the proxy listens on %s only", pr.name, listen)
				}
				if !tg.viaPodIP && !loopback(tg.host) && tg.host != host {
					t.Errorf("%s: probes %s from inside the container, and the proxy listens on %s", pr.name, tg.host, listen)
				}
				limit := time.Duration(max(pr.probe.TimeoutSeconds, 1)) * time.Second
				if pr.name == "readinessProbe" && limit <= proxy.ReadyTimeout {
					t.Errorf("%s: timeoutSeconds %d; /readyz may take %s to answer", pr.name, pr.probe.TimeoutSeconds, proxy.ReadyTimeout)
				}
				if limit <= tg.wait {
					t.Errorf("%s: timeoutSeconds %d; the probe command itself waits up to %s", pr.name, pr.probe.TimeoutSeconds, tg.wait)
				}
			}

			sc, psc := c.SecurityContext, pod.SecurityContext
			if psc == nil {
				psc = &corev1.PodSecurityContext{}
			}
			if sc == nil {
				sc = &corev1.SecurityContext{}
			}
			nonRoot, user := psc.RunAsNonRoot, psc.RunAsUser
			if sc.RunAsNonRoot != nil {
				nonRoot = sc.RunAsNonRoot
			}
			if sc.RunAsUser != nil {
				user = sc.RunAsUser
			}
			if nonRoot == nil || !*nonRoot || (user != nil && *user == 0) {
				t.Error("container may run as root: want runAsNonRoot: true")
			}
			if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				t.Error("root filesystem is writable: want readOnlyRootFilesystem: true")
			}
			if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				t.Error("want allowPrivilegeEscalation: false")
			}

			req, lim := c.Resources.Requests, c.Resources.Limits
			if req.Cpu().IsZero() || req.Memory().IsZero() || lim.Memory().IsZero() {
				t.Errorf("resources %+v; want cpu and memory requests and a memory limit", c.Resources)
			}

			stop := durationSetting(t, e, "COORDPROXY_DRAIN_DELAY") + durationSetting(t, e, "COORDPROXY_SHUTDOWN_TIMEOUT")
			if g := pod.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= stop {
				t.Errorf("terminationGracePeriodSeconds %s; want more than drain delay plus shutdown timeout, %s", seconds(g), stop)
			}
			if pod.EnableServiceLinks == nil || *pod.EnableServiceLinks {
				t.Error("enableServiceLinks is not false: a Service named coordproxy would add COORDPROXY_-prefixed variables")
			}

			checkTLSFiles(t, pod, c, e, secrets)
			if _, ok := e["COORDPROXY_ETCD_CACERT"]; ok {
				for _, ep := range strings.Split(endpoints, ",") {
					if !strings.HasPrefix(strings.TrimSpace(ep), "https://") {
						t.Errorf("COORDPROXY_ENDPOINTS entry %q is not https:// although a CA is given", ep)
					}
				}
			}
		})
	}
}

// checkTLSFiles: each etcd TLS variable names a file of a Secret mounted
// read-only, a key the Secret has, readable by the container's user.
func checkTLSFiles(t *testing.T, pod *corev1.PodSpec, c *corev1.Container, e map[string]string, secrets map[string]*corev1.Secret) {
	t.Helper()
	for _, name := range []string{"COORDPROXY_ETCD_CACERT", "COORDPROXY_ETCD_CERT", "COORDPROXY_ETCD_KEY"} {
		path, ok := e[name]
		if !ok {
			t.Errorf("%s is not set: etcd's TLS files come from a Secret", name)
			continue
		}
		var mount *corev1.VolumeMount
		for i := range c.VolumeMounts {
			if strings.HasPrefix(path, strings.TrimSuffix(c.VolumeMounts[i].MountPath, "/")+"/") {
				mount = &c.VolumeMounts[i]
			}
		}
		if mount == nil {
			t.Errorf("%s=%s is under none of the container's mounts", name, path)
			continue
		}
		if !mount.ReadOnly {
			t.Errorf("%s is mounted writable at %s", mount.Name, mount.MountPath)
		}
		var vol *corev1.Volume
		for i := range pod.Volumes {
			if pod.Volumes[i].Name == mount.Name {
				vol = &pod.Volumes[i]
			}
		}
		if vol == nil || vol.Secret == nil {
			t.Errorf("%s=%s: volume %s is not a Secret", name, path, mount.Name)
			continue
		}
		file := strings.TrimPrefix(path, strings.TrimSuffix(mount.MountPath, "/")+"/")
		key, mode := file, vol.Secret.DefaultMode
		if len(vol.Secret.Items) > 0 {
			key = ""
			for _, it := range vol.Secret.Items {
				if it.Path == file {
					key = it.Key
					if it.Mode != nil {
						mode = it.Mode
					}
				}
			}
		}
		s, ok := secrets[vol.Secret.SecretName]
		if !ok {
			t.Errorf("volume %s: Secret %s is in no manifest of deploy/kubernetes", vol.Name, vol.Secret.SecretName)
			continue
		}
		_, inData := s.Data[key]
		_, inString := s.StringData[key]
		if key == "" || !(inData || inString) {
			t.Errorf("%s=%s: Secret %s has no key for file %s", name, path, s.Name, file)
		}
		if mode != nil && *mode&0o004 == 0 && (*mode&0o040 == 0 || pod.SecurityContext == nil || pod.SecurityContext.FSGroup == nil) {
			t.Errorf("%s: Secret files of mode %#o are not readable by a non-root user without an fsGroup", name, *mode)
		}
	}
}
