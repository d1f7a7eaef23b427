package queue

import (
	"context"
	"errors"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// ErrObserverTooSlow ends an observer that fell more than its buffer behind.
var ErrObserverTooSlow = errors.New("coordproxy: observer fell behind")

// LeaderChange is the leader of the prefix (the key with the lowest create
// revision) after revision Rev. Kv is nil when the prefix became empty.
type LeaderChange struct {
	Rev    int64
	Header *pb.ResponseHeader
	Kv     *mvccpb.KeyValue
}

// Observer receives every leader change of a queue in revision order.
type Observer struct {
	C   chan LeaderChange // closed when the observer ends; see Err
	err error             // guarded by the queue's mu
	q   *Queue
}

// Err tells why C was closed: ErrObserverTooSlow or ErrStopped.
func (o *Observer) Err() error {
	o.q.mu.Lock()
	defer o.q.mu.Unlock()
	return o.err
}

// Observe registers an observer whose channel holds up to buffer changes; an
// observer that falls further behind is ended with ErrObserverTooSlow rather
// than slowing the others or dropping a change silently.
func (q *Queue) Observe(ctx context.Context, buffer int) (*Observer, error) {
	if err := q.waitReady(ctx, nil); err != nil {
		return nil, err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.stopped {
		return nil, ErrStopped
	}
	o := &Observer{C: make(chan LeaderChange, buffer), q: q}
	q.observers[o] = struct{}{}
	return o, nil
}

// StopObserving unregisters o.
func (q *Queue) StopObserving(o *Observer) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, ok := q.observers[o]; ok {
		delete(q.observers, o)
		close(o.C)
	}
}

func (q *Queue) notifyLocked() {
	var leader *mvccpb.KeyValue
	if len(q.order) > 0 {
		leader = q.order[0]
	}
	if sameKV(leader, q.leader) {
		return
	}
	q.leader = leader
	if len(q.observers) == 0 {
		return
	}
	hdr := &pb.ResponseHeader{ClusterId: q.cluster, MemberId: q.member, Revision: q.rev, RaftTerm: q.term}
	ch := LeaderChange{Rev: q.rev, Header: hdr, Kv: leader}
	for o := range q.observers {
		select {
		case o.C <- ch:
		default:
			o.err = ErrObserverTooSlow
			delete(q.observers, o)
			close(o.C)
		}
	}
}

func sameKV(a, b *mvccpb.KeyValue) bool {
	if a == nil || b == nil {
		return a == b
	}
	return string(a.Key) == string(b.Key) && a.CreateRevision == b.CreateRevision && a.ModRevision == b.ModRevision
}
