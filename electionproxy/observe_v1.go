package electionproxy

import (
	"github.com/coordproxy/coordproxy/answer"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"github.com/coordproxy/coordproxy/queue"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Observe streams the election's state when the stream began (CURRENT), then
// each change of it in revision order: a new leader (ELECTED), the leader's
// new value (PROCLAIMED), or no leader at all (NO_LEADER). It shares the
// election's one etcd watch with every other Observe, Campaign and Lock of
// the name on this proxy, exactly as etcd's Observe does here.
//
// The leaders it reports carry no TTL: asking etcd for a lease's TTL on each
// change, for each stream, would cost one request per observer per change;
// Describe reads it.
func (e *Elections) Observe(req *coordproxyv1.ObserveRequest, stream coordproxyv1.ElectionService_ObserveServer) error {
	var leader *mvccpb.KeyValue
	return observeLeader(stream.Context(), e.elections, req.Name,
		func(resp *clientv3.GetResponse) error {
			if len(resp.Kvs) > 0 {
				leader = resp.Kvs[0]
			}
			return stream.Send(&coordproxyv1.ObserveResponse{
				Header:   answer.Header(resp.Header),
				Event:    coordproxyv1.ObserveResponse_EVENT_CURRENT,
				Leader:   keyOf(leader),
				Revision: resp.Header.Revision,
			})
		},
		func(ch queue.LeaderChange) error {
			ev := leaderEvent(leader, ch.Kv)
			leader = ch.Kv
			if ev == coordproxyv1.ObserveResponse_EVENT_UNSPECIFIED {
				return nil
			}
			return stream.Send(&coordproxyv1.ObserveResponse{
				Header:   answer.Header(ch.Header),
				Event:    ev,
				Leader:   keyOf(ch.Kv),
				Revision: ch.Rev,
			})
		})
}

// leaderEvent names the change from leader was to now. A candidate is one
// key with one create revision: the same key created again (the same lease
// campaigning anew) is a new candidate. Unspecified: no change to report.
func leaderEvent(was, now *mvccpb.KeyValue) coordproxyv1.ObserveResponse_Event {
	switch {
	case now == nil && was == nil:
		return coordproxyv1.ObserveResponse_EVENT_UNSPECIFIED
	case now == nil:
		return coordproxyv1.ObserveResponse_EVENT_NO_LEADER
	case was == nil || string(was.Key) != string(now.Key) || was.CreateRevision != now.CreateRevision:
		return coordproxyv1.ObserveResponse_EVENT_ELECTED
	case was.ModRevision != now.ModRevision:
		return coordproxyv1.ObserveResponse_EVENT_PROCLAIMED
	}
	return coordproxyv1.ObserveResponse_EVENT_UNSPECIFIED
}

// keyOf is kv as a key of coordproxy's API; nil for none.
func keyOf(kv *mvccpb.KeyValue) *coordproxyv1.Key {
	if kv == nil {
		return nil
	}
	return answer.KeyInfo(kv)
}
