package deploy

import (
	"encoding/json"
	"net/http"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
)

// The alerts and the dashboard in deploy/monitoring parse with Prometheus'
// own rule and PromQL parsers (run by deploy/monitoring/check, a module of
// its own), and every metric they name is on a running proxy's /metrics.
func TestMonitoring_rulesAndDashboardParseAndNameRealMetrics(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "check")
	build := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, ".")
	build.Dir = filepath.Join("monitoring", "check")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the checker: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, filepath.Join("monitoring", "alerts.yml"), filepath.Join("monitoring", "dashboard.json")).Output()
	if err != nil {
		t.Fatalf("check: %v\n%s", err, out)
	}
	var got struct {
		Errors  []string
		Rules   int
		Panels  int
		Metrics []string
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("check's answer %q: %v", out, err)
	}
	for _, e := range got.Errors {
		t.Error(e)
	}
	if got.Rules < 8 || got.Panels < 8 || len(got.Metrics) < 10 {
		t.Fatalf("%d rules, %d panels, %d metrics: the files are not what they should be", got.Rules, got.Panels, len(got.Metrics))
	}

	// A proxy that has served a call, as a scraped replica has.
	env := proxytest.New(t, proxy.Config{})
	lease := env.Grant(t, 30)
	lk := env.MustLock(t, "monitored", lease)
	env.MustUnlock(t, lk.Key)
	if _, err := env.Lock.Unlock(proxytest.Ctx(t), &v3lockpb.UnlockRequest{Key: lk.Key}); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + env.Proxy.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range got.Metrics {
		if name == "up" { // Prometheus's own, per scrape target
			continue
		}
		family := name
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suffix); ok && families[base] != nil {
				family = base
			}
		}
		if f := families[family]; f == nil || len(f.Metric) == 0 {
			t.Errorf("the monitoring names %s, which a running proxy's /metrics does not have", name)
		}
	}
}
