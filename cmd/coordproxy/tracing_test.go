package main

import (
	"context"
	"strings"
	"testing"
)

// Tracing is on only when OpenTelemetry's standard variables ask for it.
func TestTracerProvider_followsTheStandardVariables(t *testing.T) {
	ctx := context.Background()
	for _, k := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"} {
		t.Setenv(k, "")
	}
	if tp, _, err := tracerProvider(ctx); tp != nil || err != nil {
		t.Fatalf("no OTEL variables: %v, %v; want no tracing", tp, err)
	}
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
	tp, shutdown, err := tracerProvider(ctx)
	if tp == nil || err != nil {
		t.Fatalf("with an endpoint: %v, %v; want tracing", tp, err)
	}
	shutdown(ctx)
	t.Setenv("OTEL_SDK_DISABLED", "true")
	if tp, _, err := tracerProvider(ctx); tp != nil || err != nil {
		t.Fatalf("OTEL_SDK_DISABLED=true: %v, %v; want no tracing", tp, err)
	}
	t.Setenv("OTEL_SDK_DISABLED", "")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	if _, _, err := tracerProvider(ctx); err == nil || !strings.Contains(err.Error(), "grpc only") {
		t.Fatalf("http/protobuf: %v, want a clear refusal", err)
	}
}
