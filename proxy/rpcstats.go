package proxy

import (
	"context"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
)

// rpcStats is the proxy's per-RPC instrumentation, as a gRPC stats handler
// rather than an interceptor: the per-RPC metrics of go-grpc-middleware's
// Prometheus provider, under the same names and labels
// (grpc_server_started_total, grpc_server_handled_total,
// grpc_server_msg_{received,sent}_total, grpc_server_handling_seconds), and
// the deadline overrun check. A stats handler runs beside a call, not around
// it, so it adds no frames to the stack a waiting Lock or Campaign parks
// with: measured in-process, a waiting call's goroutine keeps a 16 KiB stack
// under a chain of two or more interceptors and 8 KiB under one.
type rpcStats struct {
	started, handled, received, sent *prometheus.CounterVec
	seconds                          *prometheus.HistogramVec
	overrun                          *overrunCheck
}

func newRPCStats(reg prometheus.Registerer, overrun *overrunCheck) *rpcStats {
	labels := []string{"grpc_type", "grpc_service", "grpc_method"}
	counter := func(name, help string, extra ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, append(labels[:3:3], extra...))
	}
	r := &rpcStats{
		started:  counter("grpc_server_started_total", "Total number of RPCs started on the server."),
		handled:  counter("grpc_server_handled_total", "Total number of RPCs completed on the server, regardless of success or failure.", "grpc_code"),
		received: counter("grpc_server_msg_received_total", "Total number of RPC stream messages received on the server."),
		sent:     counter("grpc_server_msg_sent_total", "Total number of gRPC stream messages sent by the server."),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "grpc_server_handling_seconds",
			Help:    "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
			Buckets: prometheus.DefBuckets,
		}, labels),
		overrun: overrun,
	}
	reg.MustRegister(r.started, r.handled, r.received, r.sent, r.seconds)
	return r
}

// initialize creates every method's series at zero, so that a dashboard sees
// them before the first call.
func (r *rpcStats) initialize(s *grpc.Server) {
	for svc, info := range s.GetServiceInfo() {
		for _, m := range info.Methods {
			l := []string{rpcType(m.IsClientStream, m.IsServerStream), svc, m.Name}
			r.started.WithLabelValues(l...)
			r.received.WithLabelValues(l...)
			r.sent.WithLabelValues(l...)
			r.seconds.WithLabelValues(l...)
			for c := codes.OK; c <= codes.Unauthenticated; c++ {
				r.handled.WithLabelValues(append(l, c.String())...)
			}
		}
	}
}

func rpcType(clientStream, serverStream bool) string {
	switch {
	case clientStream && serverStream:
		return "bidi_stream"
	case clientStream:
		return "client_stream"
	case serverStream:
		return "server_stream"
	}
	return "unary"
}

type rpcStatsKey struct{}

// rpcCall is one call's labels, set when it begins.
type rpcCall struct {
	method string
	labels []string
}

func (r *rpcStats) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	return context.WithValue(ctx, rpcStatsKey{}, &rpcCall{method: info.FullMethodName})
}

func (r *rpcStats) HandleRPC(ctx context.Context, s stats.RPCStats) {
	c, _ := ctx.Value(rpcStatsKey{}).(*rpcCall)
	if c == nil {
		return
	}
	if b, ok := s.(*stats.Begin); ok {
		svc, method, _ := strings.Cut(strings.TrimPrefix(c.method, "/"), "/")
		c.labels = []string{rpcType(b.IsClientStream, b.IsServerStream), svc, method}
		r.started.WithLabelValues(c.labels...).Inc()
		return
	}
	if c.labels == nil {
		return
	}
	switch ev := s.(type) {
	case *stats.InPayload:
		r.received.WithLabelValues(c.labels...).Inc()
	case *stats.OutPayload:
		r.sent.WithLabelValues(c.labels...).Inc()
	case *stats.End:
		r.handled.WithLabelValues(append(c.labels[:3:3], status.Code(ev.Error).String())...).Inc()
		r.seconds.WithLabelValues(c.labels...).Observe(ev.EndTime.Sub(ev.BeginTime).Seconds())
		r.overrun.check(ctx, c.method)
	}
}

func (r *rpcStats) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (r *rpcStats) HandleConn(context.Context, stats.ConnStats)                       {}
