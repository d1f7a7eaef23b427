// Package lease0 is what a call that names lease 0 runs under: etcd's
// Lock and Campaign grant it a fresh lease that nobody refreshes
// (v3lock and v3election use concurrency.NewSession, whose default TTL is
// 60 s, and orphan the session); coordproxy does the same, for the same
// keys and lifetimes, and makes it visible: a metric counts such calls and
// the log says so once per name.
package lease0

import (
	"context"
	"log/slog"
	"sync"

	"github.com/coordproxy/coordproxy/etcdio"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TTL is the TTL of the lease granted for a call that names lease 0.
const TTL = 60

// maxNames bounds the memory spent on logging lease-0 calls once per name.
const maxNames = 4096

// Leases grants and notes the leases of lease-0 calls.
type Leases struct {
	etcd  *etcdio.Etcd
	log   *slog.Logger
	calls *prometheus.CounterVec

	mu   sync.Mutex
	seen map[string]struct{}
}

// New returns the lease-0 policy over etcd; its counter goes to reg (if not
// nil), its lines to log.
func New(etcd *etcdio.Etcd, reg prometheus.Registerer, log *slog.Logger) *Leases {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &Leases{etcd: etcd, log: log, seen: map[string]struct{}{},
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "coordproxy",
			Name:      "lease_zero_calls_total",
			Help:      "Calls that named lease 0 and so run under a fresh 60 s lease that nobody refreshes (etcd's behaviour).",
		}, []string{"rpc"})}
	if reg != nil {
		reg.MustRegister(l.calls)
	}
	return l
}

// Lease returns the lease a call runs under. For lease 0 it grants a fresh
// lease of TTL seconds that nobody refreshes, as etcd's services do, and
// notes it (Note).
func (l *Leases) Lease(ctx context.Context, rpc, name string, id int64) (clientv3.LeaseID, error) {
	if id != 0 {
		return clientv3.LeaseID(id), nil
	}
	var resp *clientv3.LeaseGrantResponse
	var err error
	l.etcd.BeforeWait(ctx, func() { resp, err = l.etcd.Grant(ctx, TTL) })
	if err != nil {
		return 0, err
	}
	l.Note(rpc, name, "granted a lease that expires in 60s unless the client keeps it alive", slog.Int64("lease", int64(resp.ID)))
	return resp.ID, nil
}

// Note counts a call that named lease 0 and logs it once per name.
func (l *Leases) Note(rpc, name, what string, attrs ...any) {
	l.calls.WithLabelValues(rpc).Inc()
	l.mu.Lock()
	_, seen := l.seen[rpc+"\x00"+name]
	if !seen && len(l.seen) < maxNames {
		l.seen[rpc+"\x00"+name] = struct{}{}
	}
	l.mu.Unlock()
	if !seen {
		l.log.Warn(rpc+" with lease 0: "+what, append([]any{"name", name}, attrs...)...)
	}
}
