package lockproxy

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the counters the Lock and Election services keep.
type Metrics struct {
	Lease0   *prometheus.CounterVec
	Cleanups *prometheus.CounterVec
	Waiting  prometheus.Gauge
}

// NewMetrics creates the metrics and registers them with reg, if not nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Lease0: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "coordproxy",
			Name:      "lease_zero_calls_total",
			Help:      "Calls that named lease 0 and so run under a fresh 60 s lease that nobody refreshes (etcd's behaviour).",
		}, []string{"rpc"}),
		Cleanups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "coordproxy",
			Name:      "waiter_cleanups_total",
			Help:      "Attempts to delete the key of a waiter whose call ended without the lock or leadership, by result.",
		}, []string{"result"}),
		Waiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "coordproxy",
			Name:      "waiters",
			Help:      "Lock and Campaign calls waiting for their turn.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.Lease0, m.Cleanups, m.Waiting)
	}
	return m
}
