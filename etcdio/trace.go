package etcdio

import (
	"context"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
)

// Tracing: when the proxy traces (proxy.Config.TracerProvider), every etcd
// request made for a call is a child span of the call's (gRPC's client
// instrumentation on the etcd clients' connections), and waits inside the
// proxy are child spans named coordproxy.* (startSpan). Untraced, a call's
// context holds no span and none of this costs anything.

// tracerName names the proxy's own spans' instrumentation scope.
const tracerName = "github.com/coordproxy/coordproxy"

// startSpan starts a child span of ctx's span if that one is recording.
func startSpan(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	parent := trace.SpanFromContext(ctx)
	if !parent.IsRecording() {
		return ctx, parent
	}
	return parent.TracerProvider().Tracer(tracerName).Start(ctx, name, opts...)
}

// StartSpan is startSpan for the packages above etcdio (queue waits).
func StartSpan(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	return startSpan(ctx, name, opts...)
}

// Propagators are the trace context formats the proxy reads from callers and
// sends to etcd: W3C trace context and baggage.
var Propagators = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

func traceDialOptions(tp trace.TracerProvider) []grpc.DialOption {
	if tp == nil {
		return nil
	}
	return []grpc.DialOption{grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(Propagators)))}
}
