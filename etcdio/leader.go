package etcdio

import (
	"context"
	"math"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"
)

// RequiresLeader reports whether the caller sent etcd's "hasleader"
// metadata (clientv3.WithRequireLeader): etcd then refuses such a call, and
// ends such a stream, with "etcdserver: no leader" when it has none.
func RequiresLeader(ctx context.Context) bool {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return false
	}
	v := md.Get(rpctypes.MetadataRequireLeaderKey)
	return len(v) > 0 && v[0] == rpctypes.MetadataHasLeader
}

// leaderWatchKey is watched from a revision that never comes, so the watch
// never sees an event: it only ends, and etcd ends a watch that requires a
// leader when its member has had none for a while (as etcd's grpc-proxy
// learns of leader loss).
const leaderWatchKey = "__coordproxy_lost_leader"

// leaderWatch tells the streams that require a leader when etcd loses it.
// Their etcd requests carry the caller's metadata, so etcd itself refuses
// them; but an Observe stream reads the election's shared watch, which is
// the proxy's own and does not require a leader. One etcd watch per proxy,
// started by the first stream that needs it.
type leaderWatch struct {
	w    clientv3.Watcher
	ctx  context.Context
	once sync.Once

	mu   sync.Mutex
	lost chan struct{} // closed while etcd has no leader
}

func newLeaderWatch(ctx context.Context, w clientv3.Watcher) *leaderWatch {
	return &leaderWatch{w: w, ctx: ctx, lost: make(chan struct{})}
}

// Lost returns a channel closed when etcd has lost its leader. The caller
// got an answer from etcd (with a leader) just before, so until the watch
// says otherwise the leader is taken to be there.
func (l *leaderWatch) Lost() <-chan struct{} {
	l.once.Do(func() { go l.run() })
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lost
}

func (l *leaderWatch) run() {
	ctx := clientv3.WithRequireLeader(l.ctx)
	// While etcd has no leader, each attempt is refused at once: ask again
	// soon, then at most once a second.
	bo := NewBackoff(100*time.Millisecond, time.Second)
	for ctx.Err() == nil {
		wch := l.w.Watch(ctx, leaderWatchKey, clientv3.WithRev(math.MaxInt64-2), clientv3.WithCreatedNotify())
		if resp, ok := <-wch; ok && resp.Created && resp.Err() == nil {
			l.found()
			bo = NewBackoff(100*time.Millisecond, time.Second)
			for range wch {
				// Anything after the creation ends the watch.
			}
		}
		if ctx.Err() != nil {
			return
		}
		l.lose()
		select {
		case <-ctx.Done():
		case <-time.After(bo.Next()):
		}
	}
}

func (l *leaderWatch) lose() {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.lost:
	default:
		close(l.lost)
	}
}

func (l *leaderWatch) found() {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.lost:
		l.lost = make(chan struct{})
	default:
	}
}
