package grant

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Services label the gauges by the API whose calls they count.
const (
	ServiceLock      = "lock"
	ServiceElection  = "election"
	ServiceSemaphore = "semaphore"
	ServiceRWLock    = "rwlock"
)

// Metrics are the counters and gauges every primitive keeps through grant.
type Metrics struct {
	Cleanups *prometheus.CounterVec
	Waiting  *prometheus.GaugeVec
	Holders  *prometheus.GaugeVec
	// OldestHold is read at each scrape from the Granter's holds.
	OldestHold *oldestHold
}

// services are the label values of the per-service metrics.
var services = []string{ServiceLock, ServiceElection, ServiceSemaphore, ServiceRWLock}

// oldestHold is coordproxy_oldest_hold_seconds: how long the longest hold
// this proxy counts in coordproxy_holders has lasted, per service (0 when
// none), for an alert on a holder that never lets go.
type oldestHold struct {
	desc *prometheus.Desc
	mu   sync.Mutex
	ages func() map[string]float64
}

func (o *oldestHold) Describe(ch chan<- *prometheus.Desc) { ch <- o.desc }

func (o *oldestHold) Collect(ch chan<- prometheus.Metric) {
	o.mu.Lock()
	ages := o.ages
	o.mu.Unlock()
	var got map[string]float64
	if ages != nil {
		got = ages()
	}
	for _, svc := range services {
		ch <- prometheus.MustNewConstMetric(o.desc, prometheus.GaugeValue, got[svc], svc)
	}
}

func (o *oldestHold) measure(ages func() map[string]float64) {
	o.mu.Lock()
	o.ages = ages
	o.mu.Unlock()
}

// NewMetrics creates the metrics and registers them with reg, if not nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
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
	m.OldestHold = &oldestHold{desc: prometheus.NewDesc("coordproxy_oldest_hold_seconds",
		"How long the longest hold this proxy counts in coordproxy_holders has lasted, by service; 0 when it counts none.", []string{"service"}, nil)}
	for _, svc := range services {
		m.Waiting.WithLabelValues(svc)
		m.Holders.WithLabelValues(svc)
	}
	for _, result := range []string{"done", "failed"} {
		m.Cleanups.WithLabelValues(result)
	}
	if reg != nil {
		reg.MustRegister(m.Cleanups, m.Waiting, m.Holders, m.OldestHold)
	}
	return m
}
