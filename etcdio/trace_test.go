package etcdio

import (
	"context"
	"runtime"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc"
)

// A traced request that waits for a slot to etcd has the wait as a child
// span, coordproxy.etcd.slot; an untraced one starts no span.
func TestLimiter_aTracedRequestsWaitForASlotIsASpan(t *testing.T) {
	exported := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exported))
	l := newLimiter(1, prometheus.NewRegistry())
	ctx, call := tp.Tracer("test").Start(context.Background(), "call")

	if !l.tryAcquire() { // the one slot, taken
		t.Fatal("the slot is not free")
	}
	sent := make(chan error, 1)
	go func() {
		sent <- l.unary(ctx, "/etcdserverpb.KV/Txn", nil, nil, nil, func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil })
	}()
	for l.waiting() == 0 { // it waits for the slot
		runtime.Gosched()
	}
	l.release()
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	call.End()
	var slot sdktrace.ReadOnlySpan
	for _, s := range exported.GetSpans().Snapshots() {
		if s.Name() == "coordproxy.etcd.slot" {
			slot = s
		}
	}
	if slot == nil || slot.Parent().SpanID() != call.SpanContext().SpanID() {
		t.Fatalf("slot span %v, want a child of the call's", slot)
	}

	// Untraced: nothing recorded, nothing started.
	exported.Reset()
	if err := l.unary(context.Background(), "/etcdserverpb.KV/Txn", nil, nil, nil, func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if n := len(exported.GetSpans()); n != 0 {
		t.Fatalf("%d spans for an untraced request", n)
	}
}
