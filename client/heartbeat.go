package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/coordproxy/coordproxy/internal/clock"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The heartbeat side of a Session: its KeepAlive stream, the heartbeats
// and their answers, SafeUntil moved by each answer, and the end of the
// session at SafeUntil from its own timer.

// beatStream is one KeepAlive stream of the session.
type beatStream struct {
	st     coordproxyv1.SessionService_KeepAliveClient
	cancel context.CancelFunc

	sendMu sync.Mutex // SendMsg is not safe for concurrent use

	mu   sync.Mutex
	n    uint64     // the last heartbeat's number
	sent []beatSent // unanswered heartbeats, oldest first
	open bool       // false once abandoned
}

type beatSent struct {
	n  uint64
	at time.Duration
}

func (b *beatStream) send(m *coordproxyv1.SessionRequest) error {
	b.sendMu.Lock()
	defer b.sendMu.Unlock()
	return b.st.Send(m)
}

// open opens a stream with first, giving up at until (on clock.Now's
// clock), and takes the answer as a heartbeat's.
func (s *Session) open(first *coordproxyv1.SessionRequest, until time.Duration) (*beatStream, *coordproxyv1.SessionResponse, error) {
	sctx, cancel := context.WithCancel(s.ctx)
	giveUp := time.AfterFunc(until-clock.Now(), cancel)
	fail := func(err error) (*beatStream, *coordproxyv1.SessionResponse, error) {
		timedOut := !giveUp.Stop()
		cancel()
		if timedOut && s.ctx.Err() == nil {
			return nil, nil, fmt.Errorf("coordproxy did not answer in time: %w", context.DeadlineExceeded)
		}
		return nil, nil, fromWire(err)
	}
	sent := clock.Now()
	// Bounded by until, it may wait for a replica to become reachable.
	st, err := s.sess.KeepAlive(sctx, grpc.WaitForReady(true))
	if err != nil {
		return fail(err)
	}
	if err := st.Send(first); err != nil {
		_, err = st.Recv() // the stream's own error
		return fail(err)
	}
	resp, err := st.Recv()
	if err != nil {
		return fail(err)
	}
	if resp.WindowMs == 0 {
		return fail(errNoHeartbeats)
	}
	if !giveUp.Stop() {
		return fail(context.DeadlineExceeded)
	}
	b := &beatStream{st: st, cancel: cancel, open: true}
	s.answered(sent, resp)
	return b, resp, nil
}

// errNoHeartbeats: a proxy older than heartbeats answered. Not final: the
// session tries again, through whichever replica answers next.
var errNoHeartbeats = status.Error(codes.Unavailable, "coordproxy does not answer session heartbeats (an older version): upgrade it")

// answered moves SafeUntil for an answer to a message sent at sent.
func (s *Session) answered(sent time.Duration, resp *coordproxyv1.SessionResponse) {
	life := min(s.window, time.Duration(resp.LeaseMs)*time.Millisecond)
	s.extend(sent + life - s.margin)
}

// extend moves SafeUntil to until if that is later.
func (s *Session) extend(until time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended || until <= time.Duration(s.safe.Load()) {
		return
	}
	s.safe.Store(int64(until))
	if s.timer != nil {
		s.timer.Reset(until - clock.Now())
	}
	select {
	case s.renewed <- struct{}{}:
	default:
	}
}

// check runs at SafeUntil: the session ends unless it moved meanwhile.
func (s *Session) check() {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return
	}
	if left := time.Duration(s.safe.Load()) - clock.Now(); left > 0 {
		s.timer.Reset(left)
		s.mu.Unlock()
		return
	}
	last := s.last
	s.mu.Unlock()
	if last != nil {
		s.end(fmt.Errorf("%w (last: %w)", ErrSessionLost, last))
	} else {
		s.end(ErrSessionLost)
	}
}

// keep runs the session's streams: heartbeats on the current one and, when
// it breaks or goes unanswered, a resume of the lease on a new one —
// through whichever replica the connection reaches — until SafeUntil.
func (s *Session) keep(b *beatStream) {
	defer close(s.exited)
	for {
		err := s.beat(b)
		b.cancel()
		if s.ctx.Err() != nil {
			s.end(s.ctx.Err())
			return
		}
		backoff := 20 * time.Millisecond
		for {
			s.mu.Lock()
			s.last = err
			s.mu.Unlock()
			if final(err) {
				s.end(err)
				return
			}
			// Resume, until SafeUntil at the latest: past it the
			// session is over whatever the proxy would say.
			until := time.Duration(s.safe.Load())
			if clock.Now() >= until {
				s.check()
				return
			}
			// A replica that was down a moment ago may be up again while
			// the connection waits out its reconnect backoff (a second and
			// growing): try every address now.
			s.client.ActiveConnection().ResetConnectBackoff()
			nb, _, rerr := s.open(&coordproxyv1.SessionRequest{Lease: int64(s.lease), WindowMs: s.window.Milliseconds(), LockDelayMs: s.lockDelay.Milliseconds()}, until)
			if rerr == nil {
				s.mu.Lock()
				if s.ended {
					s.mu.Unlock()
					nb.cancel()
					return
				}
				s.stream = nb
				s.mu.Unlock()
				b = nb
				break
			}
			err = rerr
			if s.ctx.Err() != nil {
				s.end(s.ctx.Err())
				return
			}
			t := time.NewTimer(min(backoff, until-clock.Now()))
			select {
			case <-t.C:
			case <-s.ctx.Done():
				t.Stop()
			}
			backoff = min(2*backoff, s.window/4)
		}
	}
}

// beat sends a heartbeat every window/4 on b and takes the answers, until
// the stream fails, the session ends, or a heartbeat goes unanswered for
// half the window (the stream is then abandoned for a new one: the proxy
// or the path to it may be stuck while another replica answers).
func (s *Session) beat(b *beatStream) error {
	stalled := make(chan struct{})
	go func() {
		t := time.NewTicker(s.window / 4)
		defer t.Stop()
		for {
			select {
			case <-t.C:
			case <-b.st.Context().Done():
				return
			}
			now := clock.Now()
			b.mu.Lock()
			if len(b.sent) > 0 && now-b.sent[0].at > s.window/2 {
				b.mu.Unlock()
				close(stalled)
				b.cancel()
				return
			}
			b.n++
			n := b.n
			b.sent = append(b.sent, beatSent{n: n, at: now})
			b.mu.Unlock()
			if err := b.send(&coordproxyv1.SessionRequest{Heartbeat: n}); err != nil {
				return // Recv sees why
			}
		}
	}()
	for {
		resp, err := b.st.Recv()
		if err != nil {
			select {
			case <-stalled:
				return errStalled
			default:
			}
			return fromWire(err)
		}
		if resp.Closed {
			s.end(nil)
			return nil
		}
		b.mu.Lock()
		var sent time.Duration
		found := false
		for len(b.sent) > 0 && b.sent[0].n <= resp.Heartbeat {
			if b.sent[0].n == resp.Heartbeat {
				sent, found = b.sent[0].at, true
			}
			b.sent = b.sent[1:]
		}
		b.mu.Unlock()
		if found {
			s.answered(sent, resp)
		}
	}
}

// errStalled: a heartbeat went unanswered for half the window.
var errStalled = status.Error(codes.Unavailable, "coordproxy did not answer a heartbeat within half the session's window")

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

// end ends the session once: Done is closed, Ctx ends, Err is err.
func (s *Session) end(err error) {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return
	}
	s.ended, s.err = true, err
	if s.timer != nil {
		s.timer.Stop()
	}
	s.mu.Unlock()
	s.cancel()
	close(s.done)
}
