package proxy

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// overrunCheck watches the promise that no call outlives its client's
// deadline by more than the request timeout: the proxy finishes what it
// started in etcd (an acquire transaction) within that bound and hands
// everything else (cleanups) to the background. A call that breaks it is
// logged at ERROR and counted.
type overrunCheck struct {
	log     *slog.Logger
	bound   time.Duration
	overrun prometheus.Counter
}

func newOverrunCheck(log *slog.Logger, bound time.Duration, reg prometheus.Registerer) *overrunCheck {
	c := &overrunCheck{
		log:   log,
		bound: bound,
		overrun: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "coordproxy",
			Name:      "deadline_overruns_total",
			Help:      "Calls that returned later than their deadline plus the request timeout.",
		}),
	}
	reg.MustRegister(c.overrun)
	return c
}

func (c *overrunCheck) check(ctx context.Context, method string) {
	dl, ok := ctx.Deadline()
	if !ok {
		return
	}
	if over := time.Since(dl); over > c.bound {
		c.overrun.Inc()
		c.log.Error("call outlived its deadline by more than the request timeout", "method", method, "overrun", over, "request_timeout", c.bound)
	}
}
