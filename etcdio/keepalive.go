package etcdio

import (
	"context"
	"fmt"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"
)

// Lease keep-alives that know how long the lease lives at least.
//
// etcd's client refreshes a lease over one stream and tells each answer's
// TTL, but not when it sent the keep-alive that answer is for: a lease
// refreshed with TTL t lives until t after etcd's leader handled the
// request, and only the send time is a bound the proxy can vouch for (the
// answer can come late; etcd's own client counts its deadline from the
// answer's arrival). A session promises its client a time before which
// nobody else can hold what it holds, so it needs that bound: keeper sends
// the keep-alives itself, on a few streams per caller credential, and counts each
// lease's expiry from the send time of the keep-alive etcd answered.

// Keep-alive timing, as etcd's client: a lease is refreshed a third of its
// TTL after the last answer, and a keep-alive left unanswered is sent again.
const (
	keepAliveResend = 500 * time.Millisecond
	keepAliveTick   = 100 * time.Millisecond
	keepAliveRetry  = 500 * time.Millisecond
	// A stream whose oldest keep-alive is unanswered this long is given up
	// and opened again (on the next etcd endpoint): a member cut off
	// silently would otherwise hold every lease on it until the
	// connection's keepalive noticed, tens of seconds, longer than a short
	// TTL.
	keepAliveStall = 2 * time.Second
	// Each credential's leases are spread over this many streams (by lease
	// ID, so one lease's keep-alives stay in order on one stream): etcd
	// handles a stream's keep-alives one at a time, each a round trip to
	// its leader when the member is a follower, so the first keep-alives
	// of many leases at once — the sessions of a replica that died,
	// resuming here together — would wait in one line (80 of them: 167 ms
	// at the median, 287 ms at worst on a loaded machine, more than a
	// third of a session's default window).
	keepAliveStreams = 8
)

// KeptLease is a lease the proxy keeps alive in etcd until Stop.
type KeptLease struct {
	g *kaGroup
	l *kaLease

	refreshed chan struct{} // a value after each answer (cap 1)
	known     chan struct{} // closed once the lease's expiry is known
	lost      chan struct{} // closed once the lease is gone or may be
	done      bool          // lost or stopped; under g.mu
}

// kaLease is one lease of a group, kept for one or more KeptLeases (a
// session resumed on the same replica before its old stream ended).
type kaLease struct {
	id     clientv3.LeaseID
	known  bool      // expiry is known (given, or etcd answered)
	since  time.Time // kept since
	expiry time.Time // the lease lives in etcd at least until then
	ttl    int64     // the TTL etcd last answered
	header *pb.ResponseHeader
	sent   []time.Time // keep-alives sent on the current stream, unanswered
	next   time.Time   // when to send the next one
	subs   []*KeptLease
}

// KeepLease keeps lease alive in etcd, as the caller of ctx (a caller's own
// etcd token goes with the keep-alives, since etcd checks the lease's keys
// against it), until Stop. ttl and expiry are what the caller knows of it:
// the TTL it was granted or has left, and a time it lives at least until
// (counted from when the request that told it was sent); a zero expiry
// says nothing is known: Known then waits for etcd's first answer. A
// keep-alive is sent at once.
func (e *Etcd) KeepLease(ctx context.Context, lease clientv3.LeaseID, ttl int64, expiry time.Time) *KeptLease {
	return e.keeper.keep(ctx, lease, ttl, expiry)
}

// Expiry is a time before which the lease does not expire in etcd (it may
// be revoked): the send time of the last keep-alive etcd answered plus the
// TTL it answered. Zero until Known.
func (k *KeptLease) Expiry() time.Time {
	k.g.mu.Lock()
	defer k.g.mu.Unlock()
	return k.l.expiry
}

// TTL is the TTL etcd last answered, in seconds.
func (k *KeptLease) TTL() int64 {
	k.g.mu.Lock()
	defer k.g.mu.Unlock()
	return k.l.ttl
}

// Header is the header of etcd's last answer (nil before the first).
func (k *KeptLease) Header() *pb.ResponseHeader {
	k.g.mu.Lock()
	defer k.g.mu.Unlock()
	return k.l.header
}

// Known waits until the lease's expiry is known — at once if the caller or
// an earlier keeper of the lease knew it, else when etcd answers the first
// keep-alive — and fails with etcd's "lease not found" if the lease is gone,
// or with ctx's error.
func (k *KeptLease) Known(ctx context.Context) error {
	select {
	case <-k.known:
		return nil
	case <-k.lost:
		return rpctypes.ErrGRPCLeaseNotFound
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Refreshed has a value after etcd answered a keep-alive.
func (k *KeptLease) Refreshed() <-chan struct{} { return k.refreshed }

// Lost is closed when etcd answered that the lease is gone, or when its
// expiry passed without an answer (it may be gone); the keep-alives stop.
func (k *KeptLease) Lost() <-chan struct{} { return k.lost }

// Stop stops keeping the lease alive for this caller (it lives out its TTL
// unless kept for another).
func (k *KeptLease) Stop() { k.g.k.remove(k) }

// keeper holds keepAliveStreams streams per credential with the leases kept
// on them.
type keeper struct {
	e      *Etcd
	mu     sync.Mutex
	groups map[string]*kaGroup
}

// kaGroup is the leases kept alive with one credential over one stream:
// those whose ID falls in its share.
type kaGroup struct {
	k      *keeper
	key    string
	cli    *clientv3.Client
	ctx    context.Context // the credential's metadata; ends when the group does
	cancel context.CancelFunc

	mu     sync.Mutex
	leases map[clientv3.LeaseID]*kaLease
	stream pb.Lease_LeaseKeepAliveClient // nil while (re)connecting
	wake   chan struct{}                 // a lease was added (cap 1)
}

func newKeeper(e *Etcd) *keeper { return &keeper{e: e, groups: map[string]*kaGroup{}} }

func (k *keeper) keep(ctx context.Context, lease clientv3.LeaseID, ttl int64, expiry time.Time) *KeptLease {
	var token string
	if md, ok := metadata.FromOutgoingContext(ctx); ok {
		if v := md.Get(rpctypes.TokenFieldNameGRPC); len(v) > 0 {
			token = v[0]
		}
	}
	key := fmt.Sprintf("%d/%s", uint64(lease)%keepAliveStreams, token)
	k.mu.Lock()
	defer k.mu.Unlock()
	g := k.groups[key]
	if g == nil {
		gctx := k.e.stopCtx
		if token != "" {
			gctx = metadata.AppendToOutgoingContext(gctx, rpctypes.TokenFieldNameGRPC, token)
		}
		g = &kaGroup{k: k, key: key, cli: k.e.For(gctx), leases: map[clientv3.LeaseID]*kaLease{}, wake: make(chan struct{}, 1)}
		g.ctx, g.cancel = context.WithCancel(gctx)
		k.groups[key] = g
		go g.connect()
		go g.expire()
	}
	kl := &KeptLease{g: g, refreshed: make(chan struct{}, 1), known: make(chan struct{}), lost: make(chan struct{})}
	g.mu.Lock()
	l := g.leases[lease]
	if l == nil {
		now := time.Now()
		l = &kaLease{id: lease, ttl: ttl, expiry: expiry, known: !expiry.IsZero(), since: now, next: now}
		g.leases[lease] = l
	} else if expiry.After(l.expiry) {
		l.expiry, l.known = expiry, true
	}
	if l.known {
		close(kl.known)
	}
	l.subs = append(l.subs, kl)
	kl.l = l
	g.mu.Unlock()
	select {
	case g.wake <- struct{}{}:
	default:
	}
	return kl
}

func (k *keeper) remove(kl *KeptLease) {
	g := kl.g
	k.mu.Lock()
	defer k.mu.Unlock()
	g.mu.Lock()
	kl.done = true
	l := kl.l
	for i, sub := range l.subs {
		if sub == kl {
			l.subs = append(l.subs[:i], l.subs[i+1:]...)
			break
		}
	}
	if len(l.subs) == 0 && g.leases[l.id] == l {
		delete(g.leases, l.id)
	}
	empty := len(g.leases) == 0
	g.mu.Unlock()
	if empty && k.groups[g.key] == g {
		delete(k.groups, g.key)
		g.cancel()
	}
}

// connect keeps a keep-alive stream open and reads its answers.
func (g *kaGroup) connect() {
	for g.ctx.Err() == nil {
		sctx, cancel := context.WithCancel(g.ctx)
		stream, err := pb.NewLeaseClient(rawConn(g.cli)).LeaseKeepAlive(sctx)
		if err == nil {
			g.mu.Lock()
			g.stream = stream
			g.mu.Unlock()
			go g.send(sctx, cancel, stream)
			for {
				resp, err := stream.Recv()
				if err != nil {
					break
				}
				g.answered(resp)
			}
			g.mu.Lock()
			g.stream = nil
			now := time.Now()
			for _, l := range g.leases {
				// Unanswered keep-alives of a broken stream may have
				// reached etcd; counting on them would not be a bound.
				l.sent, l.next = l.sent[:0], now
			}
			g.mu.Unlock()
		}
		cancel()
		select {
		case <-time.After(keepAliveRetry):
		case <-g.ctx.Done():
		}
	}
}

// send sends the keep-alives that are due on stream until it ends, and
// ends it (cancel) when etcd stopped answering on it.
func (g *kaGroup) send(ctx context.Context, cancel context.CancelFunc, stream pb.Lease_LeaseKeepAliveClient) {
	t := time.NewTicker(keepAliveTick)
	defer t.Stop()
	defer cancel()
	var due []int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-g.wake:
		}
		due = due[:0]
		g.mu.Lock()
		if g.stream != stream {
			g.mu.Unlock()
			return
		}
		now := time.Now()
		for id, l := range g.leases {
			if len(l.sent) > 0 && now.Sub(l.sent[0]) > keepAliveStall {
				g.mu.Unlock()
				return
			}
			if !now.Before(l.next) {
				// Recorded before the send: a bound no later than it.
				l.sent = append(l.sent, now)
				l.next = now.Add(keepAliveResend)
				due = append(due, int64(id))
			}
		}
		g.mu.Unlock()
		for _, id := range due {
			if err := stream.Send(&pb.LeaseKeepAliveRequest{ID: id}); err != nil {
				return // connect sees the stream end
			}
		}
	}
}

// answered takes etcd's answer to the oldest unanswered keep-alive of its
// lease on this stream (etcd answers a stream's requests in order).
func (g *kaGroup) answered(resp *pb.LeaseKeepAliveResponse) {
	g.mu.Lock()
	defer g.mu.Unlock()
	l := g.leases[clientv3.LeaseID(resp.ID)]
	if l == nil || len(l.sent) == 0 {
		return
	}
	sent := l.sent[0]
	l.sent = l.sent[1:]
	if resp.TTL <= 0 {
		g.lose(l)
		return
	}
	if e := sent.Add(time.Duration(resp.TTL) * time.Second); e.After(l.expiry) {
		l.expiry = e
	}
	l.known = true
	l.ttl, l.header = resp.TTL, resp.Header
	l.next = time.Now().Add(time.Duration(resp.TTL) * time.Second / 3)
	for _, kl := range l.subs {
		select {
		case <-kl.known:
		default:
			close(kl.known)
		}
		select {
		case kl.refreshed <- struct{}{}:
		default:
		}
	}
}

// expire gives up the leases whose expiry passed unrenewed.
func (g *kaGroup) expire() {
	t := time.NewTicker(keepAliveTick)
	defer t.Stop()
	for {
		select {
		case <-g.ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		g.mu.Lock()
		for _, l := range g.leases {
			// One nothing is known of gets as long as etcd's answer to a
			// request may take.
			if l.known && !now.Before(l.expiry) || !l.known && now.Sub(l.since) > g.k.e.timeout {
				g.lose(l)
			}
		}
		g.mu.Unlock()
	}
}

// lose ends l for all its KeptLeases: gone, or maybe gone. Under g.mu.
func (g *kaGroup) lose(l *kaLease) {
	if g.leases[l.id] == l {
		delete(g.leases, l.id)
	}
	for _, kl := range l.subs {
		if !kl.done {
			kl.done = true
			close(kl.lost)
		}
	}
	l.subs = nil
}
