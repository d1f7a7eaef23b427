// Package session serves coordproxy.v1.SessionService: a lease held for as
// long as its client is there, and, for a client that heartbeats, a lease
// in the proper sense: nobody else gets what it holds before the client has
// itself concluded that it lost it.
//
// A client opens a KeepAlive stream with a TTL (a new lease) or a lease it
// holds (resumed). The proxy keeps the lease alive in etcd while the session
// lasts (etcdio.KeepLease, which knows a lower bound of the lease's expiry).
//
// A session that heartbeats (window W, heartbeat.go) ends W after the last
// heartbeat this proxy received, whatever happened to the stream: a closed
// connection looks the same whether its process died or a middlebox cut
// it, so it never shortens the window. The proxy answers each heartbeat at
// once with how long the lease lives in etcd at least; the client, from the
// send time of each answered heartbeat and its own clock, knows until when
// it is safe, and stops there without waiting for the network. The two
// clocks need only run at the same rate.
//
// A session without heartbeats ends grace after its stream ended without a
// close (the client's connection closed, or the server's gRPC keepalive gave
// up on it). Its client is not told that it lost anything before others get
// it: safe only for fenced work.
//
// Either way, when the session ends without a close the proxy waits the
// lock delay, if any, and revokes the lease, so that every lock, semaphore
// place, read/write lock and leadership on it passes on at once instead of
// when the TTL runs out. A close revokes at once. A proxy that stops, or
// dies, revokes nothing: the lease lives out its TTL and the client resumes
// it through another replica.
//
// What makes a revoke safe across replicas is a record in etcd attached to
// the lease itself (so it vanishes with it): __coordproxy/session/<lease
// hex>, whose value names the session stream that last opened or resumed the
// lease. A proxy revokes only if the record still names its own stream, and
// marks it "revoking" in the same transaction; a resume through another
// replica rewrites the record unless it says "revoking". So a client that
// resumed elsewhere in time is never revoked by the replica it left, and one
// that comes back too late is told its lease is gone, as after an expiry. No
// state lives only in one proxy's memory.
package session

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/coordproxy/coordproxy/answer"
	"github.com/coordproxy/coordproxy/etcdio"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// DefaultGrace is how long after its client went away a session without
// heartbeats is revoked when the client did not choose.
const DefaultGrace = 250 * time.Millisecond

// The bounds of a session's window and lock delay.
const (
	MinWindow    = 100 * time.Millisecond
	MaxWindow    = 5 * time.Minute
	MaxLockDelay = time.Minute
)

// RecordPrefix is where the session records live (one key per lease, on
// the lease).
const RecordPrefix = "__coordproxy/session/"

// RecordKey is the session record of lease.
func RecordKey(lease clientv3.LeaseID) string { return fmt.Sprintf("%s%x", RecordPrefix, int64(lease)) }

// revoking is the record's value once a proxy has decided to revoke.
const revoking = "revoking"

var (
	errOpen = status.Error(codes.InvalidArgument,
		`the first message of a session must give exactly one of "ttl" (a new lease) and "lease" (resume it), both positive`)
	errGrace     = status.Error(codes.InvalidArgument, `"grace_ms" must be between 0 and the lease's TTL`)
	errGraceBeat = status.Error(codes.InvalidArgument, `"grace_ms" is for sessions without heartbeats: a session with "window_ms" ends a window after its last heartbeat`)
	errWindow    = status.Error(codes.InvalidArgument,
		fmt.Sprintf(`"window_ms" must be between %d and %d (or 0: no heartbeats)`, MinWindow.Milliseconds(), MaxWindow.Milliseconds()))
	errLockDelay = status.Error(codes.InvalidArgument,
		fmt.Sprintf(`"lock_delay_ms" must be between 0 and %d`, MaxLockDelay.Milliseconds()))
	errHeartbeat = status.Error(codes.InvalidArgument, `a message after the first must be a heartbeat (of a session with "window_ms") or a close`)
)

// Config is the service's settings.
type Config struct {
	// LockDelay is the least lock delay of every session: how long after a
	// session ended without a close its lease is revoked (see
	// SessionRequest.lock_delay_ms).
	LockDelay time.Duration
}

// Service is coordproxy.v1.SessionService.
type Service struct {
	coordproxyv1.UnsafeSessionServiceServer
	etcd    *etcdio.Etcd
	log     *slog.Logger
	metrics *Metrics
	cfg     Config

	instance string // this process, in the records' values
	streams  atomic.Uint64
}

// New returns the SessionService over e; the leases it grants and revokes
// go through e's LeaseHooks.
func New(e *etcdio.Etcd, log *slog.Logger, m *Metrics, cfg Config) *Service {
	b := make([]byte, 8)
	rand.Read(b)
	return &Service{etcd: e, log: log, metrics: m, cfg: cfg, instance: hex.EncodeToString(b)}
}

// session is one open KeepAlive stream.
type session struct {
	lease     clientv3.LeaseID
	id        string        // the record's value while this stream holds it
	grace     time.Duration // without heartbeats
	window    time.Duration // with heartbeats; 0 without
	lockDelay time.Duration
	kept      *etcdio.KeptLease
}

// received is a message of the stream with the time this proxy read it (a
// bound no earlier than its arrival), or the stream's end.
type received struct {
	m   *coordproxyv1.SessionRequest
	at  time.Time
	err error
}

// KeepAlive serves one session stream.
func (s *Service) KeepAlive(stream coordproxyv1.SessionService_KeepAliveServer) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	ss, resp, err := s.open(ctx, first)
	if err != nil {
		return etcdio.StopErr(ctx, err)
	}
	defer ss.kept.Stop()
	// The window counts from the answer: the open may have taken a while,
	// and the client counts from before it sent the first message.
	opened := time.Now()
	if ss.window > 0 {
		resp.WindowMs, resp.LockDelayMs = ss.window.Milliseconds(), ss.lockDelay.Milliseconds()
		resp.LeaseMs = leaseMs(ss.kept)
	}
	if err := stream.Send(resp); err != nil {
		s.ended(ss, opened.Add(ss.endAfter()), err)
		return err
	}
	s.metrics.Open.Inc()
	defer s.metrics.Open.Dec()

	msgs, quit := make(chan received), make(chan struct{})
	defer close(quit)
	go func() {
		for {
			m, err := stream.Recv()
			select {
			case msgs <- received{m: m, at: time.Now(), err: err}:
			case <-quit:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	if ss.window > 0 {
		return s.heartbeats(stream, ss, opened, msgs)
	}
	return s.refreshes(stream, ss, msgs)
}

// refreshes serves a session without heartbeats: an answer per refresh of
// the lease; the grace once the stream ended.
func (s *Service) refreshes(stream coordproxyv1.SessionService_KeepAliveServer, ss *session, msgs <-chan received) error {
	ctx := stream.Context()
	for {
		select {
		case <-ss.kept.Refreshed():
			if err := stream.Send(&coordproxyv1.SessionResponse{Header: answer.Header(ss.kept.Header()), Lease: int64(ss.lease), Ttl: ss.kept.TTL()}); err != nil {
				s.ended(ss, time.Now().Add(ss.grace), err)
				return err
			}
		case r := <-msgs:
			switch {
			case errors.Is(r.err, io.EOF) || r.err == nil && r.m.Close:
				return s.closed(ctx, stream, ss)
			case r.err != nil:
				s.ended(ss, r.at.Add(ss.grace), r.err)
				return r.err
			}
			// Anything else is ignored, as it always was.
		case <-ss.kept.Lost():
			return s.lost()
		case <-s.etcd.Stopping():
			return s.stopping()
		}
	}
}

// endAfter is how long after its last sign of life the session ends.
func (ss *session) endAfter() time.Duration {
	if ss.window > 0 {
		return ss.window
	}
	return ss.grace
}

// closed revokes the lease at the client's request and says so.
func (s *Service) closed(ctx context.Context, stream coordproxyv1.SessionService_KeepAliveServer, ss *session) error {
	resp, err := s.revoke(ctx, ss.lease)
	if err != nil {
		return err
	}
	s.metrics.Ended.WithLabelValues("close").Inc()
	return stream.Send(&coordproxyv1.SessionResponse{Header: answer.Header(resp.Header), Lease: int64(ss.lease), Closed: true})
}

// lost: the lease expired or was revoked elsewhere, or its keep-alives went
// unanswered past its expiry: etcd's word for it.
func (s *Service) lost() error {
	if s.etcd.Stopped() {
		return s.stopping()
	}
	s.metrics.Ended.WithLabelValues("lost").Inc()
	return rpctypes.ErrGRPCLeaseNotFound
}

// stopping: this proxy stops and releases nothing; the client resumes
// elsewhere.
func (s *Service) stopping() error {
	s.metrics.Ended.WithLabelValues("stopping").Inc()
	return rpctypes.ErrGRPCStopped
}

// ended handles a session that ended without a close: its client went away,
// is cut off or paused, unless the proxy is stopping. At at (the grace or
// window after the client's last sign of life) the record is marked
// revoking if it still names this stream (nobody resumed the session
// meanwhile); after the lock delay the lease is revoked. The lease is kept
// alive until then.
func (s *Service) ended(ss *session, at time.Time, why error) {
	how := "failed"
	defer func() { s.metrics.Ended.WithLabelValues(how).Inc() }()
	if !s.sleep(time.Until(at)) {
		how = "stopping"
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.etcd.RequestTimeout())
	defer cancel()
	rec := RecordKey(ss.lease)
	mark, err := s.etcd.Own().Txn(ctx).If(clientv3.Compare(clientv3.Value(rec), "=", ss.id)).
		Then(clientv3.OpPut(rec, revoking, clientv3.WithIgnoreLease())).Commit()
	cancel()
	if err != nil {
		s.log.Warn("session ended; its lease is left to expire", "lease", fmt.Sprintf("%x", int64(ss.lease)), "error", err)
		return
	}
	if !mark.Succeeded {
		how = "resumed" // or gone with its lease: nothing to revoke either way
		s.log.Debug("session ended; resumed elsewhere or gone", "lease", fmt.Sprintf("%x", int64(ss.lease)))
		return
	}
	if !s.sleep(ss.lockDelay) {
		how = "stopping" // marked: nobody resumes it; it expires with its TTL
		return
	}
	if _, err := s.revoke(context.Background(), ss.lease); err != nil {
		s.log.Warn("session ended; revoking its lease failed, it will expire", "lease", fmt.Sprintf("%x", int64(ss.lease)), "error", err)
		return
	}
	how = "gone"
	s.log.Info("session ended: the client went away; lease revoked", "lease", fmt.Sprintf("%x", int64(ss.lease)),
		"after", ss.endAfter(), "heartbeats", ss.window > 0, "lock_delay", ss.lockDelay, "cause", why)
}

// sleep waits d unless the proxy stops first (false).
func (s *Service) sleep(d time.Duration) bool {
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-s.etcd.Stopping():
		}
	}
	return !s.etcd.Stopped()
}

// revoke revokes lease, as the caller of ctx, within the request timeout
// even if the caller is gone; the keys on it are gone. A lease already gone
// is revoked.
func (s *Service) revoke(ctx context.Context, lease clientv3.LeaseID) (*clientv3.LeaseRevokeResponse, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.etcd.RequestTimeout())
	defer cancel()
	resp, err := s.etcd.Revoke(ctx, lease)
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		resp, err = &clientv3.LeaseRevokeResponse{}, nil
	}
	return resp, err
}
