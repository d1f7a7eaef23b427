package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// tracerProvider exports traces over OTLP when OpenTelemetry's standard
// variables ask for it: OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set (the exporter reads the other
// OTEL_EXPORTER_OTLP_* itself: headers, TLS, timeout), OTEL_SERVICE_NAME
// and OTEL_RESOURCE_ATTRIBUTES for the resource (service.name defaults to
// coordproxy), OTEL_TRACES_SAMPLER for sampling. Otherwise, or with
// OTEL_SDK_DISABLED=true, nil: no tracing. Only OTLP over gRPC is built in.
func tracerProvider(ctx context.Context) (trace.TracerProvider, func(context.Context) error, error) {
	off := func(context.Context) error { return nil }
	if strings.EqualFold(os.Getenv("OTEL_SDK_DISABLED"), "true") ||
		os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
		return nil, off, nil
	}
	for _, k := range []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		if v := os.Getenv(k); v != "" {
			if v != "grpc" {
				return nil, off, fmt.Errorf("invalid %s %q: coordproxy exports OTLP over grpc only", k, v)
			}
			break
		}
	}
	exp, err := otlptracegrpc.New(ctx)
	if err != nil {
		return nil, off, fmt.Errorf("OTLP trace exporter: %w", err)
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", "coordproxy")),
		resource.WithFromEnv(), resource.WithTelemetrySDK(), resource.WithHost())
	if err != nil {
		return nil, off, fmt.Errorf("OpenTelemetry resource: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	return tp, tp.Shutdown, nil
}
