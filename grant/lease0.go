package grant

import (
	"context"
	"log/slog"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Lease0TTL is the TTL of the lease granted for a call that names lease 0.
// concurrency.NewSession grants its default session TTL (60 s, unexported)
// and etcd's native services then orphan the session, so nobody refreshes it.
const Lease0TTL = 60

// maxLease0Names bounds the memory spent on logging lease-0 calls once per name.
const maxLease0Names = 4096

// Lease returns the lease a call runs under. For lease 0 it grants a fresh
// lease of Lease0TTL seconds that nobody refreshes, as etcd's services do, and
// makes that visible: a metric counts it and the log says so once per name.
func (g *Granter) Lease(ctx context.Context, rpc, name string, id int64) (clientv3.LeaseID, error) {
	if id != 0 {
		return clientv3.LeaseID(id), nil
	}
	var resp *clientv3.LeaseGrantResponse
	var err error
	g.etcd.BeforeWait(ctx, func() { resp, err = g.etcd.For(ctx).Grant(ctx, Lease0TTL) })
	if err == nil {
		err = g.etcd.LeaseGranted(ctx, resp.ID)
	}
	if err != nil {
		return 0, err
	}
	g.NoteLease0(rpc, name, "granted a lease that expires in 60s unless the client keeps it alive", slog.Int64("lease", int64(resp.ID)))
	return resp.ID, nil
}

// NoteLease0 counts a call that named lease 0 and logs it once per name.
func (g *Granter) NoteLease0(rpc, name, what string, attrs ...any) {
	g.metrics.Lease0.WithLabelValues(rpc).Inc()
	g.mu.Lock()
	_, seen := g.lease0Seen[rpc+"\x00"+name]
	if !seen && len(g.lease0Seen) < maxLease0Names {
		g.lease0Seen[rpc+"\x00"+name] = struct{}{}
	}
	g.mu.Unlock()
	if !seen {
		g.log.Warn(rpc+" with lease 0: "+what, append([]any{"name", name}, attrs...)...)
	}
}
