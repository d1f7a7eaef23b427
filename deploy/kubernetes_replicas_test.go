package deploy

import (
	"bytes"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func TestKubernetes_serviceReachesReplicasThatSurviveDisruptions(t *testing.T) {
	m := loadManifests(t)
	if len(m.services) == 0 {
		t.Fatal("no Service")
	}
	selects := func(sel *metav1.LabelSelector, d *appsv1.Deployment) bool {
		s, err := metav1.LabelSelectorAsSelector(sel)
		return err == nil && !s.Empty() && s.Matches(labels.Set(d.Spec.Template.Labels))
	}
	for _, s := range m.services {
		svc := s.obj
		if svc.Spec.Type != "" && svc.Spec.Type != corev1.ServiceTypeClusterIP {
			t.Errorf("Service %s is of type %s; want ClusterIP", svc.Name, svc.Spec.Type)
		}
		var backends []*appsv1.Deployment
		for _, d := range m.deployments {
			if selects(&metav1.LabelSelector{MatchLabels: svc.Spec.Selector}, d.obj) {
				backends = append(backends, d.obj)
			}
		}
		if len(backends) != 1 {
			t.Errorf("Service %s selects the pods of %d Deployments; want 1", svc.Name, len(backends))
			continue
		}
		d := backends[0]
		c := proxyContainer(t, &d.Spec.Template.Spec)
		listen, _ := setting(t, containerEnv(t, c), "COORDPROXY_LISTEN")
		host, portText, _ := net.SplitHostPort(listen)
		if loopback(host) {
			t.Errorf("Service %s sends to %s, which listens on %s only", svc.Name, d.Name, listen)
		}
		for _, p := range svc.Spec.Ports {
			target, err := containerPort(c, p.TargetPort)
			if err != nil || strconv.Itoa(target) != portText || p.Port != 23790 {
				t.Errorf("Service %s port %d -> %s (%v); want 23790 -> the listen port %s", svc.Name, p.Port, p.TargetPort.String(), err, portText)
			}
			if p.AppProtocol == nil || (*p.AppProtocol != "kubernetes.io/h2c" && *p.AppProtocol != "grpc") {
				t.Errorf("Service %s port %d: appProtocol %v; want kubernetes.io/h2c (gRPC in clear text)", svc.Name, p.Port, p.AppProtocol)
			}
		}
		replicas := int32(1)
		if d.Spec.Replicas != nil {
			replicas = *d.Spec.Replicas
		}
		if replicas < 3 {
			t.Errorf("Deployment %s behind Service %s has %d replicas; want 3 or more", d.Name, svc.Name, replicas)
		}
		budgets := 0
		for _, p := range m.pdbs {
			if !selects(p.obj.Spec.Selector, d) {
				continue
			}
			budgets++
			allowed := 0
			if mu := p.obj.Spec.MaxUnavailable; mu != nil {
				v, err := intstr.GetScaledValueFromIntOrPercent(mu, int(replicas), false)
				if err == nil {
					allowed = v
				}
			} else if ma := p.obj.Spec.MinAvailable; ma != nil {
				v, err := intstr.GetScaledValueFromIntOrPercent(ma, int(replicas), true)
				if err == nil {
					allowed = int(replicas) - v
				}
			}
			if allowed < 1 || allowed >= int(replicas) {
				t.Errorf("PodDisruptionBudget %s lets %d of %d replicas go at once; want at least one and not all", p.obj.Name, allowed, replicas)
			}
		}
		if budgets != 1 {
			t.Errorf("Deployment %s is covered by %d PodDisruptionBudgets; want 1", d.Name, budgets)
		}
	}
	for _, p := range m.pdbs {
		if !slices.ContainsFunc(m.deployments, func(d located[*appsv1.Deployment]) bool { return selects(p.obj.Spec.Selector, d.obj) }) {
			t.Errorf("PodDisruptionBudget %s selects no Deployment's pods", p.obj.Name)
		}
	}
}

func TestKubernetes_sidecarPodRunsTheAppNextToTheProxy(t *testing.T) {
	m := loadManifests(t)
	found := false
	for _, d := range m.deployments {
		if filepath.Base(d.file) != "sidecar.yaml" {
			continue
		}
		found = true
		pod := &d.obj.Spec.Template.Spec
		proxyContainer(t, pod)
		apps := slices.DeleteFunc(slices.Clone(pod.Containers), func(c corev1.Container) bool { return c.Name == "coordproxy" })
		if len(apps) == 0 {
			t.Errorf("sidecar.yaml: Deployment %s has no app container beside coordproxy", d.obj.Name)
		}
	}
	if !found {
		t.Fatal("sidecar.yaml has no Deployment")
	}
}

func TestKubernetes_secretsHoldNoRealKeys(t *testing.T) {
	m := loadManifests(t)
	for _, s := range m.secrets {
		values := map[string][]byte{}
		for k, v := range s.obj.Data {
			values[k] = v
		}
		for k, v := range s.obj.StringData {
			values[k] = []byte(v)
		}
		for k, v := range values {
			if bytes.Contains(v, []byte("-----BEGIN")) {
				t.Errorf("%s: Secret %s key %s holds PEM data; commit placeholders only", s.file, s.obj.Name, k)
			}
		}
	}
}
