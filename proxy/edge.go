package proxy

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/coordproxy/coordproxy/quota"
	middleware "github.com/grpc-ecosystem/go-grpc-middleware/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// edgeUnary and edgeStream are the one edge every call passes, in this
// order: once the drain delay is over they answer new calls Unavailable, as
// a stopping etcd member does, so that clients connected before the
// listener closed learn at once to go elsewhere (health checks still
// answer, NOT_SERVING); they ask package authz whether the caller may make
// the call (a stream: each message it receives, as authz decides); they
// refuse a write over MaxRequestBytes; they reserve what the call may take
// under the policy's quotas (quotas.go); they hand the caller's hasleader and
// token metadata on to etcd (forwardContext) and put its etcd requests in
// the caller's flow at the method's priority (flowContext, flows.go); they
// give errors etcd's codes and texts (wireErr); and they log the call
// (accessLog).
func (s *Server) edgeUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if s.refused(info.FullMethod) {
		return nil, rpctypes.ErrGRPCStopped
	}
	start := time.Now()
	id := s.authz.Identity(ctx)
	resp, err := s.authz.Unary(ctx, id, info.FullMethod, req, func(ctx context.Context, req any) (any, error) {
		if s.tooLarge(req) {
			return nil, rpctypes.ErrGRPCRequestTooLarge
		}
		if qc := s.quotas.Begin(id); qc != nil {
			defer qc.End()
			if err := reserve(ctx, qc, info.FullMethod); err != nil {
				return nil, err
			}
			ctx = quota.With(ctx, qc)
		}
		return handler(forwardContext(s.flowContext(ctx, id, info.FullMethod)), req)
	})
	err = wireErr(info.FullMethod, err)
	s.accessLog(ctx, id, info.FullMethod, start, err)
	return resp, err
}

// accessLog logs a call that ended, with the caller's identity, at debug
// level (--log-level debug): one line a call.
func (s *Server) accessLog(ctx context.Context, id, method string, start time.Time, err error) {
	if !s.log.Enabled(ctx, slog.LevelDebug) {
		return
	}
	addr := ""
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		addr = p.Addr.String()
	}
	s.log.Debug("call", "method", method, "identity", id, "address", addr,
		"code", status.Code(err).String(), "duration", time.Since(start).Round(time.Microsecond))
}

func (s *Server) edgeStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if s.refused(info.FullMethod) {
		return rpctypes.ErrGRPCStopped
	}
	id := s.authz.Identity(ss.Context())
	w := middleware.WrapServerStream(ss)
	w.WrappedContext = forwardContext(s.flowContext(ss.Context(), id, info.FullMethod))
	ss = s.authz.Stream(w, id, info.FullMethod)
	start := time.Now()
	if qc := s.quotas.Begin(id); qc != nil {
		defer qc.End()
		if err := reserve(ss.Context(), qc, info.FullMethod); err != nil {
			s.accessLog(ss.Context(), id, info.FullMethod, start, err)
			return err
		}
		w.WrappedContext = quota.With(w.WrappedContext, qc)
		if info.FullMethod == watchMethod {
			var end func()
			ss, end = quota.WatchStream(ss, qc)
			defer end()
		}
	}
	err := wireErr(info.FullMethod, handler(srv, ss))
	s.accessLog(ss.Context(), id, info.FullMethod, start, err)
	return err
}

// tooLarge: req is a write larger than MaxRequestBytes, which etcd refuses
// as too large when it is over its own limit (etcd measures the request
// as it proposes it, a few bytes more, so with the cluster's limit etcd
// refuses whatever this passes that is too large for it).
func (s *Server) tooLarge(req any) bool {
	switch req.(type) {
	case *pb.PutRequest, *pb.DeleteRangeRequest, *pb.TxnRequest:
		return uint(proto.Size(req.(proto.Message))) > s.cfg.MaxRequestBytes
	}
	return false
}

func (s *Server) refused(method string) bool {
	select {
	case <-s.drain.refusing:
		return !strings.HasPrefix(method, "/"+healthpb.Health_ServiceDesc.ServiceName+"/")
	default:
		return false
	}
}
