package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coordproxy/coordproxy/internal/clock"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Leaser is what the primitives need of a session: its client (whose
// connection reaches the proxy) and the lease they hold their keys on. Both
// *Session and etcd's *concurrency.Session are Leasers.
type Leaser interface {
	Client() *clientv3.Client
	Lease() clientv3.LeaseID
}

// Session defaults.
const (
	// DefaultWindow is a session's window: the proxy revokes the lease no
	// sooner than this after the last heartbeat it received, so a crashed
	// holder's locks pass on within about this long.
	DefaultWindow = 750 * time.Millisecond
	// DefaultOpenTimeout bounds NewSession when its context has no
	// deadline.
	DefaultOpenTimeout = 10 * time.Second
)

// ErrSessionLost ends a session whose window passed without an answer from
// coordproxy (the proxy or the network to it is gone, or this process was
// paused): from then on the proxy may revoke the lease and others may hold
// what it held. errors.Is(err, ErrSessionLost); the error says what
// happened last.
var ErrSessionLost = errors.New("session lost: no answer from coordproxy within the session's window")

// Session is a lease held through coordproxy's SessionService, shaped like
// concurrency.Session, with a promise concurrency's cannot make: nobody
// else holds what it holds before SafeUntil, and the session ends (Done,
// Ctx) at SafeUntil from its own timer, without waiting for the network.
//
// It sends a heartbeat every window/4 on its stream and the proxy answers
// each at once. The proxy revokes the lease no sooner than the window after
// the last heartbeat it received, whatever happens to the connection, and
// tells with each answer how long the lease lives in etcd at least. So for
// the last answered heartbeat, sent at s by this process's clock, SafeUntil
// is s + min(window, the lease's least life) − a margin (a tenth of the
// window, at least 10 ms). What it assumes: this process's clock and the
// proxy's run at the same rate (the boot-time clock on Linux, which counts a
// suspend), and nothing pauses this process between a check of Remaining
// and the write it guards — only fencing closes that gap (FencingToken).
//
// When the process dies, its locks pass on a window after its last
// heartbeat. A proxy that stops or dies releases nothing: the session
// resumes the same lease through another replica its client reaches, while
// it is within its window.
//
// Lease() is an etcd lease like any other: concurrency's Mutex and Election
// and etcd's native Lock and Election services can use it too.
type Session struct {
	client    *clientv3.Client
	sess      coordproxyv1.SessionServiceClient
	lease     clientv3.LeaseID
	window    time.Duration
	lockDelay time.Duration
	margin    time.Duration

	ctx    context.Context // the session's life
	cancel context.CancelFunc
	done   chan struct{}
	exited chan struct{} // the loop that keeps the session ended

	safe    atomic.Int64  // SafeUntil, on clock.Now's clock
	renewed chan struct{} // a value when SafeUntil moved (cap 1)

	mu     sync.Mutex
	stream *beatStream
	timer  *time.Timer // ends the session at SafeUntil
	ended  bool
	err    error // why the session ended, once done
	last   error // the last stream error, for ErrSessionLost
}

type sessionOptions struct {
	ttl       int64
	lease     clientv3.LeaseID
	window    time.Duration
	lockDelay time.Duration
	ctx       context.Context
}

// A SessionOption configures NewSession.
type SessionOption func(*sessionOptions)

// WithTTL is the lease's TTL in seconds (default 60, as concurrency's).
func WithTTL(ttl int64) SessionOption { return func(o *sessionOptions) { o.ttl = ttl } }

// WithLease resumes a session on a lease this process holds (one a session
// granted, or one granted straight at etcd) instead of granting one.
func WithLease(lease clientv3.LeaseID) SessionOption {
	return func(o *sessionOptions) { o.lease = lease }
}

// WithWindow is the session's window (default DefaultWindow; 100 ms to 5
// min): how long after its last heartbeat the proxy revokes the lease, and
// so how soon a crashed or cut-off holder's locks pass on. A longer window
// rides out longer pauses and network trouble without losing the session.
func WithWindow(d time.Duration) SessionOption { return func(o *sessionOptions) { o.window = d } }

// WithLockDelay asks the proxy to revoke the lease only this much after the
// window passed without a heartbeat (0 to 1 min; the proxy's
// --session-lock-delay is the least), for holders whose process may pause
// between checking Remaining and writing, guarding a resource that cannot
// check fencing tokens: the next holder then starts that much later after
// a crash. A Close releases at once.
func WithLockDelay(d time.Duration) SessionOption { return func(o *sessionOptions) { o.lockDelay = d } }

// WithContext bounds the session: when ctx ends, the session ends and the
// proxy revokes the lease a window later, as when the process is gone. It
// also bounds NewSession's wait for the proxy.
func WithContext(ctx context.Context) SessionOption {
	return func(o *sessionOptions) { o.ctx = ctx }
}

// NewSession opens a session on cli, whose endpoints are coordproxy
// replicas. It waits for the proxy at most until the context of
// WithContext ends, or DefaultOpenTimeout; an opening answered only after
// the window has passed is given back (its lease revoked) and tried again
// within that time, except with WithLease, whose lease the close revokes.
func NewSession(cli *clientv3.Client, opts ...SessionOption) (*Session, error) {
	o := sessionOptions{ttl: 60, window: DefaultWindow, ctx: cli.Ctx()}
	for _, opt := range opts {
		opt(&o)
	}
	ctx, cancel := context.WithCancel(o.ctx)
	s := &Session{client: cli, sess: coordproxyv1.NewSessionServiceClient(cli.ActiveConnection()),
		window: o.window, lockDelay: o.lockDelay, margin: max(o.window/10, 10*time.Millisecond),
		ctx: ctx, cancel: cancel, done: make(chan struct{}), exited: make(chan struct{}), renewed: make(chan struct{}, 1)}
	first := &coordproxyv1.SessionRequest{Ttl: o.ttl, Lease: int64(o.lease), WindowMs: o.window.Milliseconds(), LockDelayMs: o.lockDelay.Milliseconds()}
	if o.lease != 0 {
		first.Ttl = 0
	}
	until := clock.Now() + DefaultOpenTimeout
	if d, ok := o.ctx.Deadline(); ok {
		until = clock.Now() + time.Until(d)
	}
	var bs *beatStream
	var resp *coordproxyv1.SessionResponse
	for {
		var err error
		bs, resp, err = s.open(first, until)
		if err != nil {
			cancel()
			return nil, err
		}
		if clock.Now() < time.Duration(s.safe.Load()) {
			break
		}
		// Answered after its own window (a loaded proxy or etcd): not
		// safe from the start. Give the lease back (a close revokes it)
		// rather than hand out a session that is already over, and open
		// a new one while the opening's time lasts; a lease the caller
		// gave is gone with the close, so that ends here.
		bs.send(&coordproxyv1.SessionRequest{Close: true})
		closed := make(chan struct{})
		go func() { bs.st.Recv(); close(closed) }()
		select {
		case <-closed:
		case <-time.After(o.window):
		}
		bs.cancel()
		if o.lease != 0 || clock.Now() >= until {
			cancel()
			return nil, fmt.Errorf("%w: coordproxy answered the opening after the window (%s)", ErrSessionLost, o.window)
		}
	}
	s.lease = clientv3.LeaseID(resp.Lease)
	s.lockDelay = time.Duration(resp.LockDelayMs) * time.Millisecond
	s.mu.Lock()
	s.stream = bs
	s.timer = time.AfterFunc(time.Duration(s.safe.Load())-clock.Now(), s.check)
	s.mu.Unlock()
	go s.keep(bs)
	return s, nil
}

// Client is the client the session was made on.
func (s *Session) Client() *clientv3.Client { return s.client }

// Lease is the session's lease.
func (s *Session) Lease() clientv3.LeaseID { return s.lease }

// Window is the session's window.
func (s *Session) Window() time.Duration { return s.window }

// LockDelay is the lock delay in force (the larger of the session's and
// the proxy's).
func (s *Session) LockDelay() time.Duration { return s.lockDelay }

// Ctx ends when the session does.
func (s *Session) Ctx() context.Context { return s.ctx }

// Done is closed when the session has ended: closed, its lease gone, its
// window passed without an answer (at SafeUntil, from this process's own
// timer), or its context ended. Err says why.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err is why the session ended: nil after Close; ErrSessionLost when its
// window passed; else the error. nil while it lasts.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// SafeUntil is the time before which nobody else can hold what this
// session holds: a window (or the lease's least life in etcd, if shorter)
// after the last answered heartbeat was sent, less a margin. It moves
// later with each answer.
func (s *Session) SafeUntil() time.Time {
	return time.Now().Add(time.Duration(s.safe.Load()) - clock.Now())
}

// Remaining is how long the session is still safe: right before a write
// that what it holds guards, Remaining() > 0 (or more than the write takes)
// says the write cannot overlap the next holder's. It reads the clock and
// nothing else; it is ≤ 0 once the session ended.
func (s *Session) Remaining() time.Duration {
	select {
	case <-s.done:
		return 0
	default:
	}
	return time.Duration(s.safe.Load()) - clock.Now()
}

// Renewed has a value each time SafeUntil moved later (it holds one: read
// SafeUntil after receiving).
func (s *Session) Renewed() <-chan struct{} { return s.renewed }

// sessionBound ends ctx when l's Session ends (if l is one): a wait for a
// grant on a lease the session no longer keeps is over, even when the
// connection it waits on hangs. end gives the call's error: the session's
// when the session ended the call.
func sessionBound(ctx context.Context, l Leaser) (context.Context, func(error) error) {
	s, ok := l.(*Session)
	if !ok {
		return ctx, func(err error) error { return err }
	}
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.ctx, cancel)
	return ctx, func(err error) error {
		stop()
		cancel()
		if err != nil && parent.Err() == nil && s.ctx.Err() != nil {
			if e := s.Err(); e != nil {
				return e
			}
			return ErrSessionLost
		}
		return err
	}
}

// inWindow is what a grant on l's lease that came back is worth: nothing
// when l is a Session whose window passed meanwhile (the proxy may revoke
// the lease any moment and others may already hold); the grant is kept, so
// that Unlock, Release or Resign still gives it back.
func inWindow(l Leaser) error {
	s, ok := l.(*Session)
	if !ok || s.Remaining() > 0 {
		return nil
	}
	if err := s.Err(); err != nil {
		return err
	}
	return ErrSessionLost
}

// Close ends the session and revokes its lease now: every lock and
// leadership on it passes on.
func (s *Session) Close() error {
	s.mu.Lock()
	b := s.stream
	s.mu.Unlock()
	select {
	case <-s.done:
		return nil
	default:
	}
	err := b.send(&coordproxyv1.SessionRequest{Close: true})
	if err == nil {
		t := time.NewTimer(10 * time.Second)
		defer t.Stop()
		select {
		case <-s.done:
			if e := s.Err(); e != nil && !errors.Is(e, context.Canceled) {
				return e
			}
			return nil
		case <-t.C:
		}
	}
	// The proxy did not answer: revoke through the Lease service instead.
	s.end(context.Canceled)
	<-s.exited
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = s.client.Revoke(ctx, s.lease)
	return err
}
