package etcdio

import (
	"context"
	"errors"
	"io"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// errorCounter counts the errors etcd answers the proxy's etcd client with, by
// gRPC code, one per attempt: the client's own retries come through here
// each time. A call that ends because its own context did (the caller went
// away, a watch the proxy no longer needs) is not etcd's error and is not
// counted.
type errorCounter struct {
	total *prometheus.CounterVec
}

func newErrorCounter(reg prometheus.Registerer) *errorCounter {
	e := &errorCounter{total: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "coordproxy", Name: "etcd_errors_total",
		Help: "Errors from etcd to the proxy's etcd client, by gRPC code, per attempt (retries count again); calls ended by their own context are not counted.",
	}, []string{"code"})}
	// The codes of an etcd that cannot be reached or keep up, there from the
	// start so that rules on them see a 0 before the first error.
	for _, c := range []codes.Code{codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted} {
		e.total.WithLabelValues(c.String())
	}
	reg.MustRegister(e.total)
	return e
}

func (e *errorCounter) note(ctx context.Context, err error) {
	if err == nil || errors.Is(err, io.EOF) {
		return
	}
	code := status.Code(err)
	if ctx.Err() != nil && (code == codes.Canceled || code == codes.DeadlineExceeded) {
		return
	}
	e.total.WithLabelValues(code.String()).Inc()
}

func (e *errorCounter) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	e.note(ctx, err)
	return err
}

func (e *errorCounter) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	cs, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		e.note(ctx, err)
		return nil, err
	}
	return &countedStream{ClientStream: cs, e: e}, nil
}

// countedStream counts the error that ends a stream, once.
type countedStream struct {
	grpc.ClientStream
	e    *errorCounter
	done bool
}

func (s *countedStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err != nil && !s.done {
		s.done = true
		s.e.note(s.Context(), err)
	}
	return err
}
