package grant

import "context"

type heldKey struct {
	key string
	rev int64
}

// hold counts key, which this proxy has just granted with create revision
// rev, in the holders gauge of service until the name's shared watch sees the
// key deleted, whoever deletes it, or the proxy stops. It keeps the name's
// queue, and so its watch, for that long. A key counted already is not
// counted twice.
func (g *Granter) hold(service, name, key string, rev int64) {
	id := heldKey{key, rev}
	g.mu.Lock()
	if _, ok := g.held[id]; ok || g.etcd.Stopped() {
		g.mu.Unlock()
		return
	}
	g.held[id] = struct{}{}
	g.holds.Add(1)
	g.mu.Unlock()
	holders := g.metrics.Holders.WithLabelValues(service)
	holders.Inc()
	q := g.queues.Join(Prefix(name))
	go func() {
		defer g.holds.Done()
		err := q.WaitGone(context.Background(), g.etcd.Stopping(), key, rev)
		g.queues.Leave(q)
		holders.Dec()
		g.mu.Lock()
		delete(g.held, id)
		g.mu.Unlock()
		if err != nil && !g.etcd.Stopped() {
			g.log.Debug("no longer tracking a holder", "key", key, "err", err)
		}
	}()
}
