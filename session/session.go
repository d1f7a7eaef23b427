// Package session serves coordproxy.v1.SessionService: a lease held for as
// long as its client is there.
//
// A client opens a KeepAlive stream with a TTL (a new lease) or a lease it
// holds (resumed). The proxy keeps the lease alive while the stream is open
// and tells the client each refresh. When the client goes away without
// closing — its process died and the kernel closed its connection, or the
// server's gRPC keepalive gave up on a vanished host or a paused process —
// the proxy revokes the lease after the grace the client chose, so that
// every lock, semaphore place, read/write lock and leadership on it passes on
// at once instead of when the TTL runs out. A close revokes at once. A proxy
// that stops, or dies, revokes nothing: the lease lives out its TTL and the
// client resumes it through another replica.
//
// What makes a revoke safe across replicas is a record in etcd attached to
// the lease itself (so it vanishes with it): __coordproxy/session/<lease
// hex>, whose value names the session stream that last opened or resumed the
// lease. A proxy revokes after the grace only if the record still names its
// own stream, and marks it "revoking" in the same transaction; a resume
// through another replica rewrites the record unless it says "revoking". So
// a client that resumed elsewhere within the grace is never revoked by the
// replica it left, and one that comes back after the grace is told its
// lease is gone, as after an expiry. No state lives only in one proxy's
// memory.
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

	"github.com/coordproxy/coordproxy/etcdio"
	"github.com/coordproxy/coordproxy/grant"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// DefaultGrace is how long after its client went away a session's lease is
// revoked when the client did not choose.
const DefaultGrace = 250 * time.Millisecond

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
	errGrace = status.Error(codes.InvalidArgument, `"grace_ms" must be between 0 and the lease's TTL`)
)

// Service is coordproxy.v1.SessionService.
type Service struct {
	coordproxyv1.UnsafeSessionServiceServer
	etcd    *etcdio.Etcd
	g       *grant.Granter
	log     *slog.Logger
	metrics *Metrics

	instance string // this process, in the records' values
	streams  atomic.Uint64
}

// New returns the SessionService over g's etcd; what it revokes, g learns.
func New(g *grant.Granter, log *slog.Logger, m *Metrics) *Service {
	b := make([]byte, 8)
	rand.Read(b)
	return &Service{etcd: g.Etcd(), g: g, log: log, metrics: m, instance: hex.EncodeToString(b)}
}

// session is one open KeepAlive stream.
type session struct {
	lease clientv3.LeaseID
	id    string // the record's value while this stream holds it
	grace time.Duration
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
	if err := stream.Send(resp); err != nil {
		s.ended(ss, err)
		return err
	}
	s.metrics.Open.Inc()
	defer s.metrics.Open.Dec()

	// The keep-alive outlives the stream by the grace: detached.
	kctx, stopKeepAlive := context.WithCancel(context.WithoutCancel(ctx))
	defer stopKeepAlive()
	refreshes, err := s.etcd.For(ctx).KeepAlive(kctx, ss.lease)
	if err != nil {
		return err
	}
	closing, gone := make(chan struct{}), make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			switch {
			case errors.Is(err, io.EOF) || err == nil && m.Close:
				close(closing)
				return
			case err != nil:
				gone <- err
				return
			}
		}
	}()
	for {
		select {
		case ka, ok := <-refreshes:
			if !ok {
				if s.etcd.Stopped() {
					s.metrics.Ended.WithLabelValues("stopping").Inc()
					return rpctypes.ErrGRPCStopped
				}
				// Expired or revoked elsewhere: etcd's word for it.
				s.metrics.Ended.WithLabelValues("lost").Inc()
				return rpctypes.ErrGRPCLeaseNotFound
			}
			if err := stream.Send(&coordproxyv1.SessionResponse{Header: grant.Header(ka.ResponseHeader), Lease: int64(ss.lease), Ttl: ka.TTL}); err != nil {
				s.ended(ss, err)
				return err
			}
		case <-closing:
			resp, err := s.revoke(ctx, ss.lease)
			if err != nil {
				return err
			}
			s.metrics.Ended.WithLabelValues("close").Inc()
			return stream.Send(&coordproxyv1.SessionResponse{Header: grant.Header(resp.Header), Lease: int64(ss.lease), Closed: true})
		case err := <-gone:
			s.ended(ss, err)
			return err
		case <-s.etcd.Stopping():
			// Released nothing: the client resumes elsewhere.
			s.metrics.Ended.WithLabelValues("stopping").Inc()
			return rpctypes.ErrGRPCStopped
		}
	}
}

// open grants or resumes the first message's lease and writes the record.
func (s *Service) open(ctx context.Context, first *coordproxyv1.SessionRequest) (*session, *coordproxyv1.SessionResponse, error) {
	if first.Close || (first.Ttl > 0) == (first.Lease > 0) || first.Ttl < 0 || first.Lease < 0 {
		return nil, nil, errOpen
	}
	grace := DefaultGrace
	if first.GraceMs != nil {
		grace = time.Duration(*first.GraceMs) * time.Millisecond
	}
	ss := &session{grace: grace, id: fmt.Sprintf("%s-%d", s.instance, s.streams.Add(1))}
	cli := s.etcd.For(ctx)
	if first.Ttl > 0 {
		if grace < 0 || grace > time.Duration(first.Ttl)*time.Second {
			return nil, nil, errGrace
		}
		g, err := cli.Grant(ctx, first.Ttl)
		if err == nil {
			err = s.etcd.LeaseGranted(ctx, g.ID)
		}
		if err != nil {
			return nil, nil, err
		}
		ss.lease = g.ID
		rec := RecordKey(ss.lease)
		t, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(rec), "=", 0)).
			Then(clientv3.OpPut(rec, ss.id, clientv3.WithLease(ss.lease))).Commit()
		if err != nil {
			s.revoke(ctx, ss.lease) // nobody would keep it: leave nothing behind
			return nil, nil, err
		}
		return ss, &coordproxyv1.SessionResponse{Header: grant.Header(t.Header), Lease: int64(ss.lease), Ttl: g.TTL}, nil
	}
	ss.lease = clientv3.LeaseID(first.Lease)
	ttl, err := cli.TimeToLive(ctx, ss.lease)
	if err != nil {
		return nil, nil, err
	}
	if ttl.TTL <= 0 {
		return nil, nil, rpctypes.ErrGRPCLeaseNotFound
	}
	if grace < 0 || grace > time.Duration(ttl.GrantedTTL)*time.Second {
		return nil, nil, errGrace
	}
	// Adopt: write the record unless a proxy has decided to revoke.
	rec := RecordKey(ss.lease)
	put := clientv3.OpPut(rec, ss.id, clientv3.WithLease(ss.lease))
	t, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(rec), "=", 0)).Then(put).
		Else(clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.Value(rec), "!=", revoking)}, []clientv3.Op{put}, nil)).
		Commit()
	if err != nil {
		return nil, nil, err
	}
	if !t.Succeeded && !t.Responses[0].GetResponseTxn().Succeeded {
		return nil, nil, rpctypes.ErrGRPCLeaseNotFound // being revoked
	}
	return ss, &coordproxyv1.SessionResponse{Header: grant.Header(t.Header), Lease: int64(ss.lease), Ttl: ttl.TTL}, nil
}

// ended handles a stream that ended without a close: the client went away,
// unless the proxy is stopping. After the grace, the lease is revoked if the
// record still names this stream (nobody resumed the session meanwhile).
func (s *Service) ended(ss *session, why error) {
	how := "failed"
	defer func() { s.metrics.Ended.WithLabelValues(how).Inc() }()
	t := time.NewTimer(ss.grace)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.etcd.Stopping():
	}
	if s.etcd.Stopped() {
		how = "stopping"
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.etcd.RequestTimeout())
	defer cancel()
	rec := RecordKey(ss.lease)
	mark, err := s.etcd.Own().Txn(ctx).If(clientv3.Compare(clientv3.Value(rec), "=", ss.id)).
		Then(clientv3.OpPut(rec, revoking, clientv3.WithIgnoreLease())).Commit()
	if err != nil {
		s.log.Warn("session ended; its lease is left to expire", "lease", fmt.Sprintf("%x", int64(ss.lease)), "error", err)
		return
	}
	if !mark.Succeeded {
		how = "resumed" // or gone with its lease: nothing to revoke either way
		s.log.Debug("session ended; resumed elsewhere or gone", "lease", fmt.Sprintf("%x", int64(ss.lease)))
		return
	}
	if _, err := s.revoke(ctx, ss.lease); err != nil {
		s.log.Warn("session ended; revoking its lease failed, it will expire", "lease", fmt.Sprintf("%x", int64(ss.lease)), "error", err)
		return
	}
	how = "gone"
	s.log.Info("session ended: the client went away; lease revoked", "lease", fmt.Sprintf("%x", int64(ss.lease)), "grace", ss.grace, "cause", why)
}

// revoke revokes lease, as the caller of ctx, within the request timeout
// even if the caller is gone; the keys on it are gone. A lease already gone
// is revoked.
func (s *Service) revoke(ctx context.Context, lease clientv3.LeaseID) (*clientv3.LeaseRevokeResponse, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.etcd.RequestTimeout())
	defer cancel()
	resp, err := s.etcd.For(ctx).Revoke(ctx, lease)
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		resp, err = &clientv3.LeaseRevokeResponse{}, nil
	}
	if err == nil {
		s.g.LeaseRevoked(int64(lease))
	}
	return resp, err
}
