package session

import (
	"errors"
	"io"
	"time"

	"github.com/coordproxy/coordproxy/etcdio"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// heartbeats serves a session that heartbeats. Its deadline is the window
// after the last heartbeat this proxy read (or after the first answer); a
// heartbeat read at or after the deadline is too late. At the deadline the
// session ends, whether the stream is still open (a silent partition, a
// paused client) or ended (a closed connection does not shorten the
// window). Each heartbeat in time is answered at once with the lease's
// least life left in etcd.
func (s *Service) heartbeats(stream coordproxyv1.SessionService_KeepAliveServer, ss *session, opened time.Time, msgs <-chan received) error {
	ctx := stream.Context()
	deadline := opened.Add(ss.window)
	timer := time.NewTimer(ss.window)
	defer timer.Stop()
	for {
		select {
		case r := <-msgs:
			switch {
			case errors.Is(r.err, io.EOF) || r.err == nil && r.m.Close:
				return s.closed(ctx, stream, ss)
			case r.err != nil:
				// Gone, or cut off: the window runs out all the same.
				s.ended(ss, deadline, r.err)
				return r.err
			case r.m.Heartbeat == 0 || r.m.Ttl != 0 || r.m.Lease != 0:
				s.ended(ss, deadline, errHeartbeat)
				return errHeartbeat
			case !r.at.Before(deadline):
				s.ended(ss, deadline, errLate)
				return rpctypes.ErrGRPCLeaseNotFound
			}
			deadline = r.at.Add(ss.window)
			timer.Reset(time.Until(deadline))
			err := stream.Send(&coordproxyv1.SessionResponse{Lease: int64(ss.lease), Ttl: ss.kept.TTL(),
				Heartbeat: r.m.Heartbeat, LeaseMs: leaseMs(ss.kept)})
			if err != nil {
				s.ended(ss, deadline, err)
				return err
			}
		case <-timer.C:
			s.ended(ss, deadline, errLate)
			return rpctypes.ErrGRPCLeaseNotFound
		case <-ss.kept.Lost():
			return s.lost()
		case <-s.etcd.Stopping():
			return s.stopping()
		}
	}
}

// errLate is why a session whose window passed without a heartbeat ended
// (in the log); the client is told etcd's answer for a lease that is gone,
// which it is to the client.
var errLate = errors.New("session: no heartbeat within the window")

// leaseMs is how long, from now, the lease lives in etcd at least.
func leaseMs(k *etcdio.KeptLease) int64 {
	return max(0, time.Until(k.Expiry()).Milliseconds())
}
