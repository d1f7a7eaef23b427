package session

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the sessions' metrics.
type Metrics struct {
	Open  prometheus.Gauge
	Ended *prometheus.CounterVec
}

// NewMetrics registers the sessions' metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Open: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "coordproxy", Name: "sessions",
			Help: "Open SessionService.KeepAlive streams.",
		}),
		Ended: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "coordproxy", Name: "sessions_ended_total",
			Help: "Session streams ended, by how: close (the client closed it; lease revoked), gone (the client went away, was cut off or paused, and did not resume within its window, or its grace without heartbeats; lease revoked, after the lock delay if any), resumed (the client went away but resumed the lease elsewhere; kept), stopping (this proxy stops; kept for the client to resume elsewhere), lost (the lease expired or was revoked elsewhere), failed (etcd did not answer the revoke; the lease expires with its TTL).",
		}, []string{"how"}),
	}
	for _, how := range []string{"close", "gone", "resumed", "stopping", "lost", "failed"} {
		m.Ended.WithLabelValues(how)
	}
	reg.MustRegister(m.Open, m.Ended)
	return m
}
