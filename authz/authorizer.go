package authz

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"

	"github.com/coordproxy/coordproxy/etcdio"
	"github.com/coordproxy/coordproxy/policy"
	"github.com/prometheus/client_golang/prometheus"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"
)

// Authorizer applies the policy in force to every call of every service,
// etcd's and coordproxy.v1's alike, the JSON gateway's too (it calls the
// same server). A refusal is etcd's PermissionDenied ("etcdserver:
// permission denied"), logged once and counted by verb.
type Authorizer struct {
	store  *policy.Store // nil: no policy, everything allowed
	etcd   *etcdio.Etcd  // lease owners and the leases of keys
	log    *slog.Logger
	ids    identities
	owners leaseOwners
	denied *prometheus.CounterVec
}

// New returns the Authorizer of store (nil: no policy) over etcd, whose
// LeaseHooks it joins to record and forget lease owners; its refusals are
// counted in reg and logged to log.
func New(store *policy.Store, etcd *etcdio.Etcd, reg prometheus.Registerer, log *slog.Logger) *Authorizer {
	a := &Authorizer{store: store, etcd: etcd, log: log}
	a.denied = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "coordproxy", Name: "denied_total",
		Help: "Calls (and watches) the policy refused, by verb (lock, elect, read, write, lease, admin; unknown for a call no rule can allow).",
	}, []string{"verb"})
	for _, v := range []string{"lock", "elect", "read", "write", "lease", "admin", "unknown"} {
		a.denied.WithLabelValues(v)
	}
	reg.MustRegister(a.denied)
	etcd.OnLeaseGranted(a.leaseGranted)
	etcd.OnLeaseRevoked(a.owners.forget)
	return a
}

// Identity is the identity of the caller on ctx (Anonymous for none). The
// edge reads it once a call and hands it to Unary or Stream, and to
// whatever else needs it (flows, the access log).
func (a *Authorizer) Identity(ctx context.Context) string { return a.ids.of(ctx) }

// Unary runs handler for a unary call of method by id (the caller's
// Identity) if the caller may make it; it learns the user of each token
// etcd issues (Auth.Authenticate).
func (a *Authorizer) Unary(ctx context.Context, id, method string, req any, handler grpc.UnaryHandler) (any, error) {
	if err := a.decide(ctx, id, method, req); err != nil {
		return nil, err
	}
	resp, err := handler(ctx, req)
	if r, ok := resp.(*pb.AuthenticateResponse); ok && err == nil {
		a.ids.issued(r.Token, req.(*pb.AuthenticateRequest).Name)
	}
	return resp, err
}

// Stream is ss with each message it receives decided as a call of method:
// the first (an Observe's name, a session's lease, a RangeStream's range),
// every one of a lease keep-alive stream (each names a lease), and each
// watch a Watch stream creates, which is refused as etcd refuses a watch
// its RBAC does not permit: a created and canceled response, the stream
// going on.
func (a *Authorizer) Stream(ss grpc.ServerStream, id, method string) grpc.ServerStream {
	if a.store == nil {
		return ss
	}
	return &stream{ServerStream: ss, a: a, id: id, method: method}
}

type stream struct {
	grpc.ServerStream
	a       *Authorizer
	id      string // the caller's identity
	method  string
	decided bool
	sending sync.Mutex // SendMsg from the handler and from a refused watch
}

func (s *stream) SendMsg(m any) error {
	s.sending.Lock()
	defer s.sending.Unlock()
	return s.ServerStream.SendMsg(m)
}

func (s *stream) RecvMsg(m any) error {
	for {
		if err := s.ServerStream.RecvMsg(m); err != nil {
			return err
		}
		if s.method == watchMethod {
			cr := m.(*pb.WatchRequest).GetCreateRequest()
			if cr == nil || s.a.allowWatch(s.Context(), s.id, cr) {
				return nil
			}
			refused := &pb.WatchResponse{Header: &pb.ResponseHeader{}, WatchId: invalidWatchID, Created: true, Canceled: true,
				CancelReason: rpctypes.ErrGRPCPermissionDenied.Error()}
			if err := s.SendMsg(refused); err != nil {
				return err
			}
			continue
		}
		if !s.decided || s.method == keepAliveMethod {
			s.decided = true
			return s.a.decide(s.Context(), s.id, s.method, m)
		}
		return nil
	}
}

const (
	watchMethod     = "/etcdserverpb.Watch/Watch"
	keepAliveMethod = "/etcdserverpb.Lease/LeaseKeepAlive"
	txnMethod       = "/etcdserverpb.KV/Txn"
	// invalidWatchID is clientv3.InvalidWatchID: the ID of a refused watch.
	invalidWatchID = -1
)

// decide decides a request of method by id under the policy in force.
func (a *Authorizer) decide(ctx context.Context, id, method string, req any) error {
	p := a.store.Policy()
	if p == nil || strings.HasPrefix(method, "/grpc.") { // health, reflection
		return nil
	}
	if method == txnMethod {
		read, write := txnScope(req.(*pb.TxnRequest), nil, nil)
		if !p.Allows(id, policy.Read, read...) {
			return a.deny(ctx, id, method, policy.Read, read)
		}
		if !p.Allows(id, policy.Write, write...) {
			return a.deny(ctx, id, method, policy.Write, write)
		}
		return nil
	}
	var ac access
	if scope, ok := scopes[method]; ok {
		ac = scope(req)
	}
	if ac.always {
		return nil
	}
	if ac.verb == "" || !p.Allows(id, ac.verb, ac.ranges...) {
		return a.deny(ctx, id, method, ac.verb, ac.ranges)
	}
	lease := ac.lease
	if ac.leaseOf != nil {
		var err error
		if lease, err = a.storedLease(ctx, ac.leaseOf); err != nil {
			return err
		}
	}
	if lease != 0 {
		ok, err := a.mayUse(ctx, p, id, lease)
		if err != nil {
			return err
		}
		if !ok {
			return a.deny(ctx, id, method, policy.Lease, []policy.KeyRange{policy.Key(fmt.Sprintf("lease %x", lease))})
		}
	}
	return nil
}

// allowWatch decides a watch a caller creates: read on its keys.
func (a *Authorizer) allowWatch(ctx context.Context, id string, cr *pb.WatchCreateRequest) bool {
	p := a.store.Policy()
	if p == nil {
		return true
	}
	r := keyRange(cr.Key, cr.RangeEnd)
	if p.Allows(id, policy.Read, r) {
		return true
	}
	a.deny(ctx, id, watchMethod, policy.Read, []policy.KeyRange{r})
	return false
}

// deny logs and counts a refusal and returns etcd's answer for it.
func (a *Authorizer) deny(ctx context.Context, id, method string, verb policy.Verb, ranges []policy.KeyRange) error {
	addr := ""
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		addr = p.Addr.String()
	}
	var what []string
	for _, r := range ranges {
		if r.End == "" {
			what = append(what, fmt.Sprintf("%q", r.Key))
		} else {
			what = append(what, fmt.Sprintf("[%q, %q)", r.Key, r.End))
		}
	}
	label := string(verb)
	if label == "" {
		label = "unknown"
	}
	a.denied.WithLabelValues(label).Inc()
	a.log.Warn("call refused by the policy", "identity", id, "verb", label, "method", method, "keys", strings.Join(what, " "), "address", addr)
	return rpctypes.ErrGRPCPermissionDenied
}

// Gateway is h with each HTTP request carrying its client's identity (a
// client certificate, with ConnContext; else its token) into the
// in-process gRPC calls the JSON gateway makes for it.
func (a *Authorizer) Gateway(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.ids.httpIdentity(r)
		h.ServeHTTP(w, r)
	})
}
