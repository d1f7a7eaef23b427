package grant

import "github.com/prometheus/client_golang/prometheus"

// Services label the gauges by the API whose calls they count.
const (
	ServiceLock      = "lock"
	ServiceElection  = "election"
	ServiceSemaphore = "semaphore"
	ServiceRWLock    = "rwlock"
)

// Metrics are the counters and gauges every primitive keeps through grant.
type Metrics struct {
	Lease0   *prometheus.CounterVec
	Cleanups *prometheus.CounterVec
	Waiting  *prometheus.GaugeVec
	Holders  *prometheus.GaugeVec
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
		Waiting: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "coordproxy",
			Name:      "waiters",
			Help: "Lock (service=lock), Campaign (service=election), semaphore Acquire (service=semaphore) and RLock/WLock (service=rwlock) " +
				"calls to this proxy waiting in the queue for their turn.",
		}, []string{"service"}),
		Holders: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "coordproxy",
			Name:      "holders",
			Help: "Locks (service=lock), leaderships (service=election), semaphore slots (service=semaphore) and read/write locks (service=rwlock) this proxy granted and has not yet learned are gone: " +
				"at once for Unlock, Release, Resign or LeaseRevoke through this proxy, at the next check of the held keys (every 10 s by default) for releases elsewhere and expired leases. " +
				"The proxy keeps no etcd watch for them. Grants through other proxies or straight from etcd are not counted.",
		}, []string{"service"}),
	}
	for _, svc := range []string{ServiceLock, ServiceElection, ServiceSemaphore, ServiceRWLock} {
		m.Waiting.WithLabelValues(svc)
		m.Holders.WithLabelValues(svc)
	}
	if reg != nil {
		reg.MustRegister(m.Lease0, m.Cleanups, m.Waiting, m.Holders)
	}
	return m
}
