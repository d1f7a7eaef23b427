package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/sys/unix"
)

// What a scenario costs, per op, beside how fast it runs: throughput on this
// shared machine moves from run to run, CPU time and request counts much
// less. A cost window is read around the whole scenario run on one target
// (its setup of a few requests per client included, which the thousands of
// ops of a timed scenario dwarf).

// costSnapshot is the counters a cost window differences.
type costSnapshot struct {
	etcdCPU, proxyCPU   float64 // seconds of user+system time; -1 unknown
	requests, watchMsgs float64 // etcd's unary requests started, watch messages sent; -1 unknown
	proxyAllocs         float64 // heap objects the proxy allocated (go_memstats_mallocs_total); -1 unknown
}

func (b *bench) costNow(ctx context.Context, proxy *child) costSnapshot {
	s := costSnapshot{etcdCPU: -1, proxyCPU: -1, requests: -1, watchMsgs: -1, proxyAllocs: -1}
	if b.etcd != nil {
		if v, err := b.etcd.cpu(); err == nil {
			s.etcdCPU = v
		}
	}
	if v, err := proxy.cpu(); err == nil {
		s.proxyCPU = v
	}
	if fams, err := readMetrics(ctx, proxy.metricsBase()); err == nil {
		if _, ok := fams["go_memstats_mallocs_total"]; ok {
			s.proxyAllocs = sumMetric(fams, "go_memstats_mallocs_total", nil)
		}
	}
	if fams, err := readMetrics(ctx, b.etcdURL); err == nil {
		s.requests = sumMetric(fams, "grpc_server_started_total", map[string]string{"grpc_type": "unary"})
		s.watchMsgs = sumMetric(fams, "grpc_server_msg_sent_total", map[string]string{"grpc_service": "etcdserverpb.Watch"})
	}
	return s
}

// addCost puts the window's cost per op into r.Extra. The proxy's CPU and
// allocations are reported for the proxy target only: on the native one
// they measure the idle proxy. Allocations per op move least of all from
// run to run: what the hot path costs the proxy, apart from the machine.
func addCost(r *result, before, after costSnapshot) {
	if r.Count == 0 {
		return
	}
	if r.Extra == nil {
		r.Extra = map[string]any{}
	}
	per := func(a, b float64) float64 { return (b - a) / float64(r.Count) }
	if before.etcdCPU >= 0 && after.etcdCPU >= 0 {
		r.Extra["etcd_cpu_us_per_op"] = round1(per(before.etcdCPU, after.etcdCPU) * 1e6)
	}
	if r.Target != "etcd" && before.proxyCPU >= 0 && after.proxyCPU >= 0 {
		r.Extra["proxy_cpu_us_per_op"] = round1(per(before.proxyCPU, after.proxyCPU) * 1e6)
	}
	if r.Target != "etcd" && before.proxyAllocs >= 0 && after.proxyAllocs >= 0 {
		r.Extra["proxy_allocs_per_op"] = round1(per(before.proxyAllocs, after.proxyAllocs))
	}
	if before.requests >= 0 && after.requests >= 0 {
		r.Extra["etcd_requests_per_op"] = round2(per(before.requests, after.requests))
		r.Extra["etcd_watch_msgs_per_op"] = round2(per(before.watchMsgs, after.watchMsgs))
	}
}

func round1(v float64) float64 { return float64(int64(v*10+0.5)) / 10 }
func round2(v float64) float64 { return float64(int64(v*100+0.5)) / 100 }

// cpu is the child's user and system time so far, in seconds.
func (c *child) cpu() (float64, error) {
	st, err := c.stat()
	if err != nil {
		return 0, err
	}
	return st.CPUTime(), nil
}

// readMetrics reads the /metrics of etcd or the proxy at base.
func readMetrics(ctx context.Context, base string) (map[string]*dto.MetricFamily, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base, "/")+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(resp.Body)
}

// sumMetric adds up the series of metric name whose labels include labels.
func sumMetric(fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	f, ok := fams[name]
	if !ok {
		return 0
	}
	var sum float64
series:
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for k, v := range labels {
			if have[k] != v {
				continue series
			}
		}
		switch {
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		}
	}
	return sum
}

// etcdWatchers reads etcd's watcher gauge (watcherMetric) from its /metrics,
// summed over its series.
func etcdWatchers(ctx context.Context, etcdURL string) (float64, error) {
	name := watcherMetric
	fams, err := readMetrics(ctx, etcdURL)
	if err != nil {
		return 0, err
	}
	if f, ok := fams[name]; !ok || len(f.Metric) == 0 {
		return 0, fmt.Errorf("etcd has no metric %s", name)
	}
	return sumMetric(fams, name, nil), nil
}

// The sidecar layout (-pin): etcd on CPU 0, coordbench (the load) and the
// proxy on the others, so that what the proxy costs is not taken from
// etcd's CPU and etcd's CPU per op is measured on a core of its own.

// pinSelf puts every thread of this process on cpus; threads started later
// inherit it, and so do the processes it starts.
func pinSelf(cpus []int) error { return pinPid(os.Getpid(), cpus) }

// restoreAffinity puts every thread of this process back on the CPUs of set.
func restoreAffinity(set unix.CPUSet) {
	var cpus []int
	for i := range 1024 {
		if set.IsSet(i) {
			cpus = append(cpus, i)
		}
	}
	pinSelf(cpus)
}

// pinPid puts every thread of process pid on cpus.
func pinPid(pid int, cpus []int) error {
	var set unix.CPUSet
	for _, c := range cpus {
		set.Set(c)
	}
	tasks, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil {
		return err
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil {
			return fmt.Errorf("pin thread %d of %d: %w", tid, pid, err)
		}
	}
	return nil
}

// pinLayout is etcd's CPU and the others', or an error where the machine
// has fewer than 2.
func pinLayout() (etcd []int, rest []int, err error) {
	n := runtime.NumCPU()
	if n < 2 {
		return nil, nil, fmt.Errorf("-pin needs at least 2 CPUs, this machine has %d", n)
	}
	for i := 1; i < n; i++ {
		rest = append(rest, i)
	}
	return []int{0}, rest, nil
}
