// Package quota bounds what one identity may have at once through one
// replica: calls waiting, keys held, sessions open, leases granted and
// live, watches open (the policy file's quotas, package policy). A call
// over a quota is refused with ResourceExhausted and a message in etcd's
// style naming it ("etcdserver: too many held keys"), before it sends
// anything to etcd, so that a refusal leaves nothing behind; the refusal
// is logged with the identity, counted by rule name (the number of
// identities is unbounded, the rules' is not) and described in a
// QuotaFailure status detail.
//
// The edge begins a Call for each call (Begin) and reserves what the
// method may take (Take); what the call keeps is claimed (Claim: a key
// held, a lease granted) and given back when it goes; what it does not
// keep is given back when the call ends (End). Counts are per replica:
// coordproxy keeps no state of its own, so N replicas behind a load
// balancer allow an identity up to N times a quota.
package quota

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/coordproxy/coordproxy/policy"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Kind is a resource a quota bounds.
type Kind int8

// The resources, as the policy file names them.
const (
	// Waiting is calls that may wait for their turn: Lock, Campaign,
	// Acquire, RLock, WLock, from their start to their answer.
	Waiting Kind = iota
	// Held is keys held through the replica (a lock, a leadership, a
	// semaphore slot, a read or write lock), from the grant until the
	// replica learns the key is gone (grant's holders). An acquisition
	// reserves one as it starts.
	Held
	// Sessions is coordproxy.v1 session streams open.
	Sessions
	// Leases is leases granted through the replica (LeaseGrant, a session,
	// a call with lease 0) until revoked through it or gone from etcd.
	Leases
	// Watches is watches open on Watch streams.
	Watches

	numKinds = int(Watches) + 1
)

var kinds = [numKinds]struct{ name, message string }{
	Waiting:  {"waiting", "etcdserver: too many waiting calls"},
	Held:     {"held", "etcdserver: too many held keys"},
	Sessions: {"sessions", "etcdserver: too many sessions"},
	Leases:   {"leases", "etcdserver: too many leases"},
	Watches:  {"watches", "etcdserver: too many watches"},
}

// String is the quota's name in the policy file and its metrics.
func (k Kind) String() string { return kinds[k].name }

// Message is the error message of a call over k's quota.
func (k Kind) Message() string { return kinds[k].message }

func limitOf(l policy.Limits, k Kind) *int {
	return [numKinds]*int{l.Waiting, l.Held, l.Sessions, l.Leases, l.Watches}[k]
}

// Quotas counts each identity's resources and refuses what is over its
// quota.
type Quotas struct {
	store    *policy.Store
	log      *slog.Logger
	exceeded *prometheus.CounterVec

	// live lists the leases etcd has (set by SetLiveLeases): leases that
	// expired in etcd are counted until a quota of leases is reached, then
	// checked at most once per verifyEvery.
	live func(ctx context.Context) (map[int64]bool, error)

	mu       sync.Mutex
	accounts map[string]*account  // identities with anything counted
	leases   map[int64]leaseTaken // leases granted, by lease
	verified time.Time
}

type leaseTaken struct {
	by *account
	at time.Time // when it was counted
}

type account struct {
	id   string
	used [numKinds]int
}

// verifyEvery bounds how often the leases counted are checked against
// etcd's.
const verifyEvery = time.Second

// New is the Quotas of the policy in store (nil: none), counted in reg and
// logged to log.
func New(store *policy.Store, reg prometheus.Registerer, log *slog.Logger) *Quotas {
	q := &Quotas{store: store, log: log, accounts: map[string]*account{}, leases: map[int64]leaseTaken{}}
	q.exceeded = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "coordproxy", Name: "quota_exceeded_total",
		Help: "Calls (and watches) refused over a quota of the policy file, by quota rule name (default: callers no rule names) and quota (waiting, held, sessions, leases, watches).",
	}, []string{"rule", "quota"})
	for k := range numKinds {
		q.exceeded.WithLabelValues(policy.DefaultQuota, Kind(k).String())
	}
	reg.MustRegister(q.exceeded)
	return q
}

// SetLiveLeases sets how the leases etcd has are listed. Set before serving.
func (q *Quotas) SetLiveLeases(f func(ctx context.Context) (map[int64]bool, error)) { q.live = f }

// Call is one call's reservations.
type Call struct {
	q        *Quotas
	id       string
	reserved [numKinds]int
}

// Begin is the Call of a call by identity id; nil when the policy in force
// sets no quota (a nil *Call takes nothing and refuses nothing).
func (q *Quotas) Begin(id string) *Call {
	if q == nil || !q.store.Policy().HasQuotas() {
		return nil
	}
	return &Call{q: q, id: id}
}

type callKey struct{}

// With is ctx carrying c.
func With(ctx context.Context, c *Call) context.Context {
	if c == nil {
		return ctx
	}
	return context.WithValue(ctx, callKey{}, c)
}

// From is the Call ctx carries; nil for none.
func From(ctx context.Context) *Call {
	c, _ := ctx.Value(callKey{}).(*Call)
	return c
}

// Take reserves one of k for the call, or refuses it over the caller's
// quota.
func (c *Call) Take(ctx context.Context, k Kind) error {
	if c == nil {
		return nil
	}
	q := c.q
	p := q.store.Policy()
	if p == nil {
		return nil
	}
	rule, limits := p.Quota(c.id)
	limit := limitOf(limits, k)
	q.mu.Lock()
	a := q.accountLocked(c.id)
	if limit != nil && a.used[k] >= *limit && k == Leases && q.live != nil && time.Since(q.verified) >= verifyEvery {
		q.verified = time.Now()
		q.mu.Unlock()
		q.verifyLeases(ctx)
		q.mu.Lock()
		a = q.accountLocked(c.id)
	}
	if limit != nil && a.used[k] >= *limit {
		q.dropIfIdleLocked(a)
		q.mu.Unlock()
		return q.refuse(c.id, rule, k, *limit)
	}
	a.used[k]++
	c.reserved[k]++
	q.mu.Unlock()
	return nil
}

// Claim moves one of k from the call's reservations into the caller's
// keeping (one is counted if none was reserved) and returns what gives it
// back, once.
func (c *Call) Claim(k Kind) (release func()) {
	if c == nil {
		return func() {}
	}
	q := c.q
	q.mu.Lock()
	a := q.accountLocked(c.id)
	if c.reserved[k] > 0 {
		c.reserved[k]--
	} else {
		a.used[k]++
	}
	q.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { q.give(a, k, 1) }) }
}

// End gives back what the call reserved and did not claim.
func (c *Call) End() {
	if c == nil {
		return
	}
	for k, n := range c.reserved {
		if n > 0 {
			c.q.mu.Lock()
			c.q.giveLocked(c.q.accountLocked(c.id), Kind(k), n)
			c.q.mu.Unlock()
			c.reserved[k] = 0
		}
	}
}

// accountLocked is id's account, made if it has none. Under q.mu.
func (q *Quotas) accountLocked(id string) *account {
	a := q.accounts[id]
	if a == nil {
		a = &account{id: id}
		q.accounts[id] = a
	}
	return a
}

func (q *Quotas) give(a *account, k Kind, n int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.giveLocked(a, k, n)
}

func (q *Quotas) giveLocked(a *account, k Kind, n int) {
	a.used[k] -= n
	q.dropIfIdleLocked(a)
}

// dropIfIdleLocked forgets an account with nothing counted, so that the
// accounts are only the identities that have something.
func (q *Quotas) dropIfIdleLocked(a *account) {
	if a.used == [numKinds]int{} && q.accounts[a.id] == a {
		delete(q.accounts, a.id)
	}
}

// refuse logs and counts a call over quota k and returns its error.
func (q *Quotas) refuse(id, rule string, k Kind, limit int) error {
	q.exceeded.WithLabelValues(rule, k.String()).Inc()
	q.log.Warn("call refused over a quota", "identity", id, "rule", rule, "quota", k.String(), "limit", limit)
	return Error(rule, k, limit)
}

// Error is the error of a call over the quota k of rule.
func Error(rule string, k Kind, limit int) error {
	st := status.New(codes.ResourceExhausted, k.Message())
	if d, err := st.WithDetails(&errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{{
		Subject:     "quota rule " + rule,
		Description: fmt.Sprintf("%s: at most %d at once per identity on this replica", k, limit),
	}}}); err == nil {
		st = d
	}
	return st.Err()
}

// LeaseGranting reserves a lease for the caller on ctx before it is granted
// (etcdio's LeaseHooks.Granting).
func (q *Quotas) LeaseGranting(ctx context.Context) error { return From(ctx).Take(ctx, Leases) }

// LeaseGranted counts lease, just granted, as its caller's until it is
// revoked (etcdio's LeaseHooks.Granted).
func (q *Quotas) LeaseGranted(ctx context.Context, lease clientv3.LeaseID) error {
	c := From(ctx)
	if c == nil {
		return nil
	}
	c.Claim(Leases)
	q.mu.Lock()
	defer q.mu.Unlock()
	q.leases[int64(lease)] = leaseTaken{by: q.accountLocked(c.id), at: time.Now()}
	return nil
}

// LeaseRevoked stops counting lease (etcdio's LeaseHooks.Revoked).
func (q *Quotas) LeaseRevoked(lease int64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if l, ok := q.leases[lease]; ok {
		delete(q.leases, lease)
		q.giveLocked(l.by, Leases, 1)
	}
}

// verifyLeases stops counting the leases etcd no longer has (expired, or
// revoked elsewhere); a lease counted since the list was asked for may
// not be on it yet, and stays.
func (q *Quotas) verifyLeases(ctx context.Context) {
	asked := time.Now()
	live, err := q.live(ctx)
	if err != nil {
		q.log.Warn("quota: could not list etcd's leases", "error", err)
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for lease, l := range q.leases {
		if !live[lease] && l.at.Before(asked) {
			delete(q.leases, lease)
			q.giveLocked(l.by, Leases, 1)
		}
	}
}
