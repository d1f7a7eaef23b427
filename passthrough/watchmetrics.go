package passthrough

import "github.com/prometheus/client_golang/prometheus"

// WatchMetrics are the shared watches' metrics.
type WatchMetrics struct {
	shared prometheus.Gauge
	moves  *prometheus.CounterVec
}

// NewWatchMetrics registers the shared watches' metrics in reg.
func NewWatchMetrics(reg prometheus.Registerer) *WatchMetrics {
	m := &WatchMetrics{
		shared: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "coordproxy", Name: "watch_shared",
			Help: "etcd watches shared by the watchers of this replica (one per key range, prev_kv and credentials watched).",
		}),
		moves: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "coordproxy", Name: "watch_moves_total",
			Help: "Watchers moved between a shared etcd watch and one of their own, by where to: own (the client fell behind, or etcd ended the shared watch), shared (caught up, joined).",
		}, []string{"to"}),
	}
	m.moves.WithLabelValues("own")
	m.moves.WithLabelValues("shared")
	reg.MustRegister(m.shared, m.moves)
	return m
}
