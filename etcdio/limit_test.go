package etcdio

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The limiter is tested on its own here with an invoker standing in for the
// call to etcd: what matters is the context each request is sent with.
// (Requests through it to a real etcd run in every other test.)

// A request from SendTimeout that waited for a slot longer than
// its timeout is still sent, with the whole timeout counted from the send.
func TestLimiter_sendTimeoutRunsFromTheSend(t *testing.T) {
	l := newLimiter(1, prometheus.NewRegistry())
	const timeout = 200 * time.Millisecond

	release := make(chan struct{})
	busy := make(chan struct{})
	go l.unary(context.Background(), "/busy", nil, nil, nil, func(ctx context.Context, _ string, _, _ any, _ *grpc.ClientConn, _ ...grpc.CallOption) error {
		close(busy)
		<-release
		return nil
	})
	<-busy

	ctx, cancel := SendTimeout(context.Background(), context.Background(), timeout)
	defer cancel()
	time.AfterFunc(3*timeout, func() { close(release) })
	var left time.Duration
	err := l.unary(ctx, "/queued", nil, nil, nil, func(ctx context.Context, _ string, _, _ any, _ *grpc.ClientConn, _ ...grpc.CallOption) error {
		d, ok := ctx.Deadline()
		if !ok {
			return errors.New("sent without a deadline")
		}
		left = time.Until(d)
		return ctx.Err()
	})
	if err != nil {
		t.Fatalf("queued request: %v", err)
	}
	// It waited 3× its timeout for the slot; sent, it had (almost) all of it.
	if left < timeout/2 || left > timeout {
		t.Fatalf("sent with %v left of a %v timeout", left, timeout)
	}
}

// The queue context still ends the wait for a slot, and then nothing is sent.
func TestLimiter_queueContextEndsTheWait(t *testing.T) {
	l := newLimiter(1, prometheus.NewRegistry())
	release := make(chan struct{})
	defer close(release)
	busy := make(chan struct{})
	go l.unary(context.Background(), "/busy", nil, nil, nil, func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
		close(busy)
		<-release
		return nil
	})
	<-busy

	client, leave := context.WithCancel(context.Background())
	ctx, cancel := SendTimeout(client, client, time.Minute)
	defer cancel()
	time.AfterFunc(50*time.Millisecond, leave)
	sent := false
	err := l.unary(ctx, "/queued", nil, nil, nil, func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
		sent = true
		return nil
	})
	if status.Code(err) != codes.Canceled || sent {
		t.Fatalf("client left while queued: err %v, sent %v; want Canceled and not sent", err, sent)
	}

	// A plain context's deadline covers the queue too.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	err = l.unary(ctx2, "/queued", nil, nil, nil, func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
		sent = true
		return nil
	})
	if status.Code(err) != codes.DeadlineExceeded || sent {
		t.Fatalf("deadline passed while queued: err %v, sent %v; want DeadlineExceeded and not sent", err, sent)
	}
}

// However late a request is sent (the etcd client sends a request again after
// some errors, each time through the limiter), its deadline is at most the
// timeout after the queue context's: calls end within the request timeout of
// their caller's deadline.
func TestLimiter_sendTimeoutEndsWithinTheTimeoutOfTheQueueDeadline(t *testing.T) {
	l := newLimiter(1, prometheus.NewRegistry())
	const timeout = time.Second
	queue, cancelQueue := context.WithDeadline(context.Background(), time.Now().Add(-300*time.Millisecond))
	defer cancelQueue()
	ctx, cancel := SendTimeout(queue, queue, timeout)
	defer cancel()
	var left time.Duration
	err := l.unary(ctx, "/late", nil, nil, nil, func(ctx context.Context, _ string, _, _ any, _ *grpc.ClientConn, _ ...grpc.CallOption) error {
		d, _ := ctx.Deadline()
		left = time.Until(d)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if left > timeout-300*time.Millisecond || left < timeout/2 {
		t.Fatalf("sent 300ms after the queue's deadline with %v left; want at most %v", left, timeout-300*time.Millisecond)
	}
}
