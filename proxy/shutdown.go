package proxy

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// drain is where Shutdown is: draining from its start (/readyz 503),
// refusing new calls once the drain delay is over.
type drain struct {
	draining atomic.Bool
	end      chan struct{} // closed to end the drain delay early (tests)
	refusing chan struct{} // closed when the drain delay is over
	refuse   sync.Once
}

func newDrain() drain {
	return drain{end: make(chan struct{}), refusing: make(chan struct{})}
}

// Shutdown stops the server in steps. First /readyz answers 503 and every
// gRPC health service NOT_SERVING, while calls are still served for the
// drain delay so that load balancers notice and send new calls elsewhere.
// Then new calls are refused with Unavailable, in-flight unary calls finish,
// waiting Lock and Campaign calls remove their keys and answer Unavailable,
// streams end; what is still running when ctx is done is cut off. Keys that
// clients hold stay: they belong to the clients' leases. Last the etcd
// client and, in dev mode, the embedded etcd are closed. ctx bounds the
// whole sequence, drain delay included.
func (s *Server) Shutdown(ctx context.Context) {
	s.drain.draining.Store(true)
	s.health.Shutdown() // every service NOT_SERVING
	if d := s.cfg.DrainDelay; d > 0 {
		s.log.Info("draining: /readyz answers 503 and health NOT_SERVING; still serving", "drain_delay", d)
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-s.drain.end:
		case <-ctx.Done():
		}
		t.Stop()
	}
	s.log.Info("stopping: new calls are refused")
	s.drain.refuse.Do(func() { close(s.drain.refusing) })
	if s.member.unregister != nil {
		s.member.unregister() // leaves MemberList (its lease is revoked)
	}
	stopped := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(stopped)
	}()
	s.access.Stop()
	select {
	case <-stopped:
	case <-ctx.Done():
		s.log.Warn("graceful stop timed out; closing remaining calls")
		s.grpc.Stop()
		<-stopped
	}
	// gRPC calls are over, the gateway's with them; GracefulStop closed
	// the in-memory listener too, and closeEtcdSide closes the gateway's
	// connection.
	s.inproc.Close()
	if s.member.registered != nil {
		select {
		case <-s.member.registered:
		case <-ctx.Done():
		}
	}
	if err := s.http.Shutdown(ctx); err != nil {
		s.http.Close()
	}
	s.mux.Close()
	s.lis.Close()
	if s.stopPolicy != nil {
		s.stopPolicy()
	}
	s.closeEtcdSide(ctx)
	s.log.Info("stopped")
}

// closeEtcdSide closes the gateway's connection and everything toward etcd,
// giving pending cleanups until ctx is done.
func (s *Server) closeEtcdSide(ctx context.Context) {
	if s.gwConn != nil {
		s.gwConn.Close()
	}
	if s.inproc != nil {
		s.inproc.Close()
	}
	if s.granter != nil {
		s.granter.Close(ctx)
	}
	if s.access != nil {
		s.access.Close()
	}
	if s.etcd != nil {
		s.etcd.Close()
		s.log.Info("embedded etcd stopped", "data_dir", s.etcd.Dir)
	}
}
