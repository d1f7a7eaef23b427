package quota

import (
	"sync"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
)

// WatchStream is ss, a Watch stream of the call c, with each watch it
// creates counted until it is canceled or the stream ends (end, which the
// caller runs when the stream's handler returns). A create over the
// quota is answered as etcd answers a watch it refuses (created and
// canceled at once, the reason in cancel_reason) and the stream goes on.
// etcd answers a stream's creates in their order, so each create's
// reservation is settled by the next created response.
func WatchStream(ss grpc.ServerStream, c *Call) (_ grpc.ServerStream, end func()) {
	if c == nil {
		return ss, func() {}
	}
	w := &watchStream{ServerStream: ss, c: c, live: map[int64]func(){}}
	return w, w.end
}

type watchStream struct {
	grpc.ServerStream
	c *Call

	mu      sync.Mutex
	pending []func()         // reservations of creates not yet answered, in order
	live    map[int64]func() // the stream's watches, by ID
	ended   bool
}

// invalidWatchID is clientv3.InvalidWatchID: the ID of a refused watch.
const invalidWatchID = -1

func (s *watchStream) RecvMsg(m any) error {
	for {
		if err := s.ServerStream.RecvMsg(m); err != nil {
			return err
		}
		if m.(*pb.WatchRequest).GetCreateRequest() == nil {
			return nil
		}
		if err := s.c.Take(s.Context(), Watches); err != nil {
			refused := &pb.WatchResponse{Header: &pb.ResponseHeader{}, WatchId: invalidWatchID, Created: true, Canceled: true,
				CancelReason: Watches.Message()}
			if err := s.ServerStream.SendMsg(refused); err != nil {
				return err
			}
			continue
		}
		s.mu.Lock()
		s.pending = append(s.pending, s.c.Claim(Watches))
		s.mu.Unlock()
		return nil
	}
}

func (s *watchStream) SendMsg(m any) error {
	if r, ok := m.(*pb.WatchResponse); ok {
		s.settle(r)
	}
	return s.ServerStream.SendMsg(m)
}

// settle moves a create's reservation to the watch it made, or gives it
// back for a watch that ended.
func (s *watchStream) settle(r *pb.WatchResponse) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.Created && len(s.pending) > 0 {
		release := s.pending[0]
		s.pending = s.pending[1:]
		if r.Canceled || s.ended {
			release()
		} else {
			s.live[r.WatchId] = release
		}
		return
	}
	if r.Canceled {
		if release, ok := s.live[r.WatchId]; ok {
			delete(s.live, r.WatchId)
			release()
		}
	}
}

// end gives back every watch of the stream: it ended.
func (s *watchStream) end() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ended = true
	for _, release := range s.pending {
		release()
	}
	s.pending = nil
	for id, release := range s.live {
		delete(s.live, id)
		release()
	}
}
