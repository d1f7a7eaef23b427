package proxy_test

import (
	"context"
	"testing"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// With a TracerProvider, a call is a span that continues the caller's trace
// (W3C trace context), its wait in the queue is a child span, and the etcd
// requests made for it are child spans too.
func TestTracing_aWaitingLockIsASpanWithItsWaitAndItsEtcdRequests(t *testing.T) {
	exported := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exported))
	defer tp.Shutdown(context.Background())
	env := proxytest.New(t, proxy.Config{TracerProvider: tp})
	ctx := proxytest.Ctx(t)

	// The caller traces with its own provider and sends traceparent.
	callerSpans := tracetest.NewInMemoryExporter()
	callerTP := sdktrace.NewTracerProvider(sdktrace.WithSyncer(callerSpans))
	conn, err := grpc.NewClient(env.Proxy.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelgrpc.WithTracerProvider(callerTP), otelgrpc.WithPropagators(propagation.TraceContext{}))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	holder := env.MustLock(t, "traced", env.Grant(t, 30))
	waiter := env.Grant(t, 30)
	cctx, root := callerTP.Tracer("test").Start(ctx, "caller")
	done := proxytest.Go(func() error {
		_, err := v3lockpb.NewLockClient(conn).Lock(cctx, &v3lockpb.LockRequest{Name: []byte("traced"), Lease: waiter})
		return err
	})
	env.WaitKeys(t, "traced/", 2)
	env.MustUnlock(t, holder.Key)
	if err := done.Wait(t); err != nil {
		t.Fatal(err)
	}
	root.End()

	var server, wait sdktrace.ReadOnlySpan
	var etcdSpans int
	spans := exported.GetSpans().Snapshots()
	for _, s := range spans {
		switch {
		case s.Name() == "v3lockpb.Lock/Lock" && s.SpanKind().String() == "server":
			server = s
		case s.Name() == "coordproxy.queue.wait":
			wait = s
		}
	}
	if server == nil {
		t.Fatalf("no server span for the Lock call among %d spans", len(spans))
	}
	if server.SpanContext().TraceID() != root.SpanContext().TraceID() {
		t.Fatalf("the call's span is in trace %s, the caller's in %s: the trace context was not continued", server.SpanContext().TraceID(), root.SpanContext().TraceID())
	}
	if wait == nil || wait.Parent().SpanID() != server.SpanContext().SpanID() || !wait.EndTime().After(wait.StartTime()) {
		t.Fatalf("queue wait span %v, want a child of the call's span %s that lasted", wait, server.SpanContext().SpanID())
	}
	for _, s := range spans {
		if s.SpanKind().String() == "client" && s.SpanContext().TraceID() == server.SpanContext().TraceID() && s.Parent().SpanID() == server.SpanContext().SpanID() {
			etcdSpans++
		}
	}
	if etcdSpans == 0 {
		t.Fatalf("no etcd request span under the call's span among %d spans", len(spans))
	}
}
