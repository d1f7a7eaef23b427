package etcdio

import (
	"context"
	"errors"
	"fmt"
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

// queueUp starts a request of f waiting for a slot of l and returns once it
// waits; granted receives its name when it gets the slot.
func queueUp(t *testing.T, l *limiter, f flowOf, name string, granted chan<- string) {
	t.Helper()
	before := l.waiting()
	go func() {
		if err := l.acquire(context.Background(), f); err == nil {
			granted <- name
		}
	}()
	for l.waiting() == before {
		time.Sleep(time.Millisecond)
	}
}

// next releases the slot held and returns who got it.
func next(t *testing.T, l *limiter, granted <-chan string) string {
	t.Helper()
	l.release()
	select {
	case n := <-granted:
		return n
	case <-time.After(10 * time.Second):
		t.Fatal("nobody got the slot")
		return ""
	}
}

// A freed slot goes to the highest priority waiting: a release queued
// behind acquisitions goes first.
func TestLimiter_releasesGoAheadOfAcquisitions(t *testing.T) {
	l := newLimiter(1, prometheus.NewRegistry())
	if !l.tryAcquire() {
		t.Fatal("the slot is not free")
	}
	granted := make(chan string, 8)
	for i := range 3 {
		queueUp(t, l, flowOf{flow: "a", prio: PriorityAcquire}, fmt.Sprintf("acquire %d", i), granted)
	}
	queueUp(t, l, flowOf{flow: "a", prio: PriorityPass}, "kv", granted)
	queueUp(t, l, flowOf{flow: "b", prio: PriorityRelease}, "release", granted)
	want := []string{"release", "acquire 0", "acquire 1", "acquire 2", "kv"}
	for _, w := range want {
		if got := next(t, l, granted); got != w {
			t.Fatalf("slot went to %q, want %q (order %v)", got, w, want)
		}
	}
	l.release()
	if l.free != 1 || l.waiting() != 0 {
		t.Fatalf("after all: %d free, %d waiting; want 1 and 0", l.free, l.waiting())
	}
}

// Within a priority, flows take turns: one request of B, queued behind
// ten of A's, is served after one of A's, not after ten.
func TestLimiter_flowsTakeTurns(t *testing.T) {
	l := newLimiter(1, prometheus.NewRegistry())
	l.tryAcquire()
	granted := make(chan string, 16)
	a, b := flowOf{flow: "tenant-a", prio: PriorityAcquire}, flowOf{flow: "tenant-b", prio: PriorityAcquire}
	for i := 0; bucketOf(a.flow, flowBuckets) == bucketOf(b.flow, flowBuckets); i++ {
		b.flow = fmt.Sprintf("tenant-b%d", i) // flows of one bucket share its turn
	}
	for i := range 10 {
		queueUp(t, l, a, fmt.Sprintf("a%d", i), granted)
	}
	queueUp(t, l, b, "b", granted)
	var order []string
	for range 11 {
		order = append(order, next(t, l, granted))
	}
	if order[0] != "a0" || order[1] != "b" {
		t.Fatalf("order %v: B should be served right after A's first", order)
	}
	for i, n := range order[2:] {
		if n != fmt.Sprintf("a%d", i+1) {
			t.Fatalf("order %v: A's requests out of their own order", order)
		}
	}
}

// A request whose caller gives up leaves its queue; the slots stay
// counted right, also when the slot came as the caller gave up.
func TestLimiter_aWaiterThatGivesUpLeavesNoTrace(t *testing.T) {
	l := newLimiter(1, prometheus.NewRegistry())
	l.tryAcquire()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.acquire(ctx, flowOf{flow: "a", prio: PriorityAcquire}) }()
	for l.waiting() == 0 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("acquire of a caller that left: %v", err)
	}
	if l.waiting() != 0 || len(l.levels[PriorityAcquire].turns) != 0 {
		t.Fatalf("%d waiting, turns %v after the caller left", l.waiting(), l.levels[PriorityAcquire].turns)
	}
	l.release()
	if l.free != 1 {
		t.Fatalf("%d free slots, want 1", l.free)
	}
	// Handed over while giving up: the slot goes back.
	for range 100 {
		l.tryAcquire()
		ctx, cancel := context.WithCancel(context.Background())
		go func() { done <- l.acquire(ctx, flowOf{flow: "a", prio: PriorityAcquire}) }()
		for l.waiting() == 0 {
			time.Sleep(time.Millisecond)
		}
		go cancel()
		l.release()
		if err := <-done; err == nil {
			l.release()
		}
		if l.free != 1 || l.waiting() != 0 {
			t.Fatalf("%d free, %d waiting after a race of grant and cancel", l.free, l.waiting())
		}
	}
}
