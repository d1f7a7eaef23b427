package client

import (
	"context"
	"errors"
	"sync"
	"time"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Leaser is what the primitives need of a session: its client (whose
// connection reaches the proxy) and the lease they hold their keys on. Both
// *Session and etcd's *concurrency.Session are Leasers.
type Leaser interface {
	Client() *clientv3.Client
	Lease() clientv3.LeaseID
}

// Session is a lease held through coordproxy's SessionService, shaped like
// concurrency.Session: the proxy keeps the lease alive while this process
// keeps the session's stream open, and revokes it within the grace once the
// process is gone (its connection closes when it dies), so that what it holds
// passes on at once instead of when the TTL runs out. A proxy that stops or
// dies releases nothing: the session resumes the same lease through another
// replica the client's connection reaches, for as long as the lease lives.
//
// Lease() is an etcd lease like any other: concurrency's Mutex and Election
// and etcd's native Lock and Election services can use it too.
type Session struct {
	client *clientv3.Client
	sess   coordproxyv1.SessionServiceClient
	lease  clientv3.LeaseID
	grace  *int64

	ctx    context.Context // the session's life
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	stream coordproxyv1.SessionService_KeepAliveClient
	expiry time.Time // when the lease runs out unless refreshed
	err    error     // why the session ended, once done
}

type sessionOptions struct {
	ttl   int64
	lease clientv3.LeaseID
	grace *int64
	ctx   context.Context
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

// WithGrace is how long after this process went away the proxy revokes the
// lease (default: the proxy's, 250 ms). At most the TTL.
func WithGrace(d time.Duration) SessionOption {
	return func(o *sessionOptions) { ms := d.Milliseconds(); o.grace = &ms }
}

// WithContext bounds the session: when ctx ends, its stream ends and the
// proxy revokes the lease after the grace, as when the process is gone.
func WithContext(ctx context.Context) SessionOption {
	return func(o *sessionOptions) { o.ctx = ctx }
}

// NewSession opens a session on cli, whose endpoints are coordproxy
// replicas.
func NewSession(cli *clientv3.Client, opts ...SessionOption) (*Session, error) {
	o := sessionOptions{ttl: 60, ctx: cli.Ctx()}
	for _, opt := range opts {
		opt(&o)
	}
	ctx, cancel := context.WithCancel(o.ctx)
	s := &Session{client: cli, sess: coordproxyv1.NewSessionServiceClient(cli.ActiveConnection()),
		grace: o.grace, ctx: ctx, cancel: cancel, done: make(chan struct{})}
	first := &coordproxyv1.SessionRequest{Ttl: o.ttl, Lease: int64(o.lease), GraceMs: o.grace}
	if o.lease != 0 {
		first.Ttl = 0
	}
	lease, err := s.open(first)
	if err != nil {
		cancel()
		return nil, err
	}
	s.lease = lease
	go s.keep()
	return s, nil
}

// open opens a stream with first and reads the answer.
func (s *Session) open(first *coordproxyv1.SessionRequest) (clientv3.LeaseID, error) {
	st, err := s.sess.KeepAlive(s.ctx)
	if err != nil {
		return 0, fromWire(err)
	}
	if err := st.Send(first); err != nil {
		_, err = st.Recv() // the stream's own error
		return 0, fromWire(err)
	}
	resp, err := st.Recv()
	if err != nil {
		return 0, fromWire(err)
	}
	s.mu.Lock()
	s.stream = st
	s.expiry = time.Now().Add(time.Duration(resp.Ttl) * time.Second)
	s.mu.Unlock()
	return clientv3.LeaseID(resp.Lease), nil
}

// keep reads refreshes and, when the stream breaks while the lease may
// still live (the proxy stopped or died, the connection broke), resumes the
// session, through whichever replica the connection reaches, until the
// lease would have run out.
func (s *Session) keep() {
	defer close(s.done)
	backoff := 50 * time.Millisecond
	for {
		s.mu.Lock()
		st := s.stream
		s.mu.Unlock()
		resp, err := st.Recv()
		if err == nil {
			if resp.Closed {
				s.end(nil)
				return
			}
			s.mu.Lock()
			s.expiry = time.Now().Add(time.Duration(resp.Ttl) * time.Second)
			s.mu.Unlock()
			backoff = 50 * time.Millisecond
			continue
		}
		for {
			if s.ctx.Err() != nil {
				s.end(s.ctx.Err())
				return
			}
			if final(err) || time.Now().After(s.expiry) {
				s.end(fromWire(err))
				return
			}
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-s.ctx.Done():
				t.Stop()
				continue
			}
			backoff = min(2*backoff, time.Second)
			if _, err = s.open(&coordproxyv1.SessionRequest{Lease: int64(s.lease), GraceMs: s.grace}); err == nil {
				break
			}
		}
	}
}

// final: the session cannot be resumed (the lease is gone, or the request
// is refused as such).
func final(err error) bool {
	code := status.Code(err)
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		code = ee.Code()
	}
	switch code {
	case codes.NotFound, codes.InvalidArgument, codes.PermissionDenied, codes.Unauthenticated:
		return true
	}
	return false
}

func (s *Session) end(err error) {
	s.mu.Lock()
	s.err = err
	s.mu.Unlock()
	s.cancel()
}

// Client is the client the session was made on.
func (s *Session) Client() *clientv3.Client { return s.client }

// Lease is the session's lease.
func (s *Session) Lease() clientv3.LeaseID { return s.lease }

// Ctx ends when the session does.
func (s *Session) Ctx() context.Context { return s.ctx }

// Done is closed when the session has ended: closed, its lease gone, or
// unresumable before the lease ran out. Err says why.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err is why the session ended: nil after Close, else the error; nil while
// it lasts.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close ends the session and revokes its lease now: every lock and
// leadership on it passes on.
func (s *Session) Close() error {
	s.mu.Lock()
	st := s.stream
	s.mu.Unlock()
	select {
	case <-s.done:
		return nil
	default:
	}
	err := st.Send(&coordproxyv1.SessionRequest{Close: true})
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
	s.cancel()
	<-s.done
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = s.client.Revoke(ctx, s.lease)
	return err
}
