package passthrough

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/coordproxy/coordproxy/etcdio"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Watch serves etcd's Watch service. With sharing (the default), the
// watchers of all client streams of a replica that watch the same key range
// with the same credentials (etcdio.Credentials: a caller's token never
// carries another's watch) and the same prev_kv share one etcd watch
// (watchshare.go), so that a thousand clients observing one leader or one
// config prefix cost etcd one watcher. A watcher that cannot share, or not
// yet, has an etcd watch of its own on a stream of its own (watchown.go):
// one that asks for fragments, one whose start revision is older than what
// the shared watch keeps, one whose client fell behind. Every client stream
// keeps etcd's semantics per watcher: its start revision, prev_kv, filters,
// progress notifications, watch IDs chosen by the proxy as etcd chooses them
// (and the client's own, refused when taken), created and canceled answers
// with etcd's headers, compaction as etcd reports it (a watcher that needs
// history goes to etcd for it), RequestProgress answered only once every
// watcher of the stream has been sent every event up to the revision it
// reports.
//
// Without sharing, each client stream is one etcd stream, requests and
// responses unchanged but for the namespace. Either way a client's
// require-leader metadata goes along (proxy/forward.go): etcd itself then
// ends the stream with "etcdserver: no leader" when it loses its leader.
type Watch struct {
	pb.UnsafeWatchServer
	ns     string
	etcd   *etcdio.Etcd
	share  bool
	linger time.Duration
	groups wGroups
	m      *WatchMetrics
}

// WatchConfig is how watchers share etcd watches.
type WatchConfig struct {
	// Unshared gives each client stream an etcd stream of its own.
	Unshared bool
	// Linger keeps a shared watch this long after its last watcher left,
	// for the watchers that come and go; 0 cancels it then, a negative
	// value never (etcd's suites run so, every watcher joining).
	Linger time.Duration
}

// NewWatch returns the Watch service; ns is the proxy's namespace.
func NewWatch(etcd *etcdio.Etcd, ns string, cfg WatchConfig, m *WatchMetrics) *Watch {
	return &Watch{ns: ns, etcd: etcd, share: !cfg.Unshared, linger: cfg.Linger, m: m}
}

// Watch serves one client stream. It ends when the client goes away, when
// an etcd stream it depends on fails (with that stream's error, as the
// client's own would have), and with Unavailable when the proxy stops.
func (w *Watch) Watch(stream pb.Watch_WatchServer) error {
	ctx, cancel := w.etcd.WithStop(stream.Context())
	defer cancel()
	if !w.share {
		up, err := pb.NewWatchClient(w.etcd.Conn(ctx)).Watch(ctx)
		if err != nil {
			return etcdio.StopErr(ctx, err)
		}
		return etcdio.StopErr(ctx, relay(cancel, stream, up, w.in, w.out))
	}
	s := &wStream{w: w, ctx: ctx, down: stream, creds: w.etcd.CredentialsOf(ctx),
		wake: make(chan struct{}, 1), room: make(chan struct{}, 1), watchers: map[int64]*wWatcher{}}
	defer s.close()
	// On its group's etcd stream from the start: etcd ends a hasleader
	// stream that has no leader, watchers or not.
	if _, err := s.group(); err != nil {
		return err
	}
	go s.receive()
	return etcdio.StopErr(ctx, s.send())
}

// in puts a watch the client creates under the namespace.
func (w *Watch) in(req *pb.WatchRequest) error {
	if cr := req.GetCreateRequest(); cr != nil && w.ns != "" {
		cr.Key, cr.RangeEnd = prefixInterval(w.ns, cr.Key, cr.RangeEnd)
	}
	return nil
}

func (w *Watch) out(resp *pb.WatchResponse) {
	if w.ns == "" {
		return
	}
	for _, ev := range resp.Events {
		stripKV(w.ns, ev.Kv)
		stripKV(w.ns, ev.PrevKv)
	}
}

// wQueue is how many responses per watcher a client stream may have unsent
// before a shared watcher of it is moved to an etcd watch of its own (a
// slow client is never cancelled, and never holds the others back); a
// watcher of its own then waits for the client, as etcd's would.
const wQueue = 256

// wStream is one client stream served with sharing.
type wStream struct {
	w     *Watch
	ctx   context.Context
	down  pb.Watch_WatchServer
	creds etcdio.Credentials

	mu       sync.Mutex
	q        []*pb.WatchResponse // to send, in order
	wake     chan struct{}       // cap 1: q has something, or err is set
	room     chan struct{}       // cap 1: the sender took q
	err      error               // ends the stream
	watchers map[int64]*wWatcher // by the client's watch ID
	nextID   int64               // as etcd's watch stream's
	leaves   int64               // watchers that left a shared watch for their own
	prog     *wProgress          // the latest RequestProgress, until answered
	g        *wGroup             // its credentials' group, from the start
}

// wWatcher is one watcher of a client stream. Its fields are under its
// stream's mu; changing sw also takes the group's mu (first).
type wWatcher struct {
	s        *wStream
	id       int64
	cr       *pb.WatchCreateRequest
	canceled bool
	sw       *sharedWatch // while it shares
	next     int64        // while it shares: the first revision it is to be sent
	own      *ownWatch    // while it has an etcd watch of its own
	refusedE bool         // etcd refused its create
}

// receive handles the client's requests in order, as etcd's recvLoop does:
// a create is answered before the next request is read. A client that is
// done sending keeps its watchers (etcd's stream stays open too).
func (s *wStream) receive() {
	for {
		req, err := s.down.Recv()
		if errors.Is(err, io.EOF) {
			return
		}
		if err == nil {
			err = s.handle(req)
		}
		if err != nil {
			s.fail(err)
			return
		}
	}
}

func (s *wStream) handle(req *pb.WatchRequest) error {
	switch {
	case req.GetCreateRequest() != nil:
		_ = s.w.in(req)
		return s.create(req.GetCreateRequest())
	case req.GetCancelRequest() != nil:
		s.cancelWatch(req.GetCancelRequest().WatchId)
	case req.GetProgressRequest() != nil:
		s.requestProgress()
	}
	return nil
}

// create starts one watcher. etcd refuses a negative start revision and an
// empty range before it allocates an ID: such a create goes to etcd as it
// is, for etcd's answer.
func (s *wStream) create(cr *pb.WatchCreateRequest) error {
	if len(cr.Key) == 0 {
		cr.Key = []byte{0} // etcd's smallest key
	}
	wt := &wWatcher{s: s, id: clientv3.InvalidWatchID, cr: cr}
	emptyRange := len(cr.RangeEnd) > 0 && !bytes.Equal(cr.RangeEnd, []byte{0}) && bytes.Compare(cr.Key, cr.RangeEnd) >= 0
	if cr.StartRevision < 0 || emptyRange {
		return s.startOwn(wt, cr.StartRevision, ownAnswer)
	}
	s.mu.Lock()
	prevNext := s.nextID
	if cr.WatchId != clientv3.AutoWatchID {
		if s.watchers[cr.WatchId] != nil {
			s.mu.Unlock()
			return s.refuseDuplicate(cr)
		}
		wt.id = cr.WatchId
	} else {
		for s.watchers[s.nextID] != nil {
			s.nextID++
		}
		wt.id = s.nextID
		s.nextID++
	}
	s.watchers[wt.id] = wt
	s.mu.Unlock()
	undo := func() { // etcd refused it: the ID was never taken
		s.mu.Lock()
		if s.watchers[wt.id] == wt {
			delete(s.watchers, wt.id)
			s.nextID = prevNext
		}
		s.mu.Unlock()
	}
	var err error
	if cr.Fragment {
		err = s.startOwn(wt, cr.StartRevision, ownAnswer)
	} else {
		err = s.join(wt)
	}
	if wt.refused() {
		undo()
	}
	return err
}

// refuseDuplicate answers a create whose client-chosen ID is taken, with
// etcd's header and reason; etcd judges the caller's permission first.
func (s *wStream) refuseDuplicate(cr *pb.WatchCreateRequest) error {
	resp := &pb.WatchResponse{WatchId: clientv3.InvalidWatchID, Created: true, Canceled: true,
		CancelReason: "mvcc: duplicate watch ID provided on the WatchStream"}
	r, err := probe(s.ctx, s.w.etcd, cr.Key, cr.RangeEnd, 0)
	if err != nil {
		resp.CancelReason = rpctypes.ErrorDesc(err)
		resp.Header = &pb.ResponseHeader{}
	} else {
		resp.Header = r.Header
	}
	s.mu.Lock()
	s.pushLocked(resp)
	s.mu.Unlock()
	return nil
}

// cancelWatch ends a watcher as etcd's Cancel does: a canceled answer,
// nothing for an ID the stream does not have.
func (s *wStream) cancelWatch(id int64) {
	s.mu.Lock()
	wt := s.watchers[id]
	if wt == nil {
		s.mu.Unlock()
		return
	}
	delete(s.watchers, id)
	wt.canceled = true
	own, g := wt.own, s.g
	s.mu.Unlock()
	if own != nil {
		own.cancelByClient() // etcd answers
		return
	}
	if g != nil && g.leave(wt, true) {
		return
	}
	// Between shared and own: the proxy answers.
	s.mu.Lock()
	s.pushLocked(&pb.WatchResponse{Header: s.w.groups.header(), WatchId: id, Canceled: true})
	s.mu.Unlock()
}

// pushLocked queues resp for the client.
func (s *wStream) pushLocked(resp *pb.WatchResponse) {
	s.q = append(s.q, resp)
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// fullLocked says the client is too far behind to be given n responses
// more: wQueue per watcher of the stream are unsent.
func (s *wStream) fullLocked(n int) bool {
	return len(s.q)+n > wQueue*max(1, len(s.watchers))
}

// pushWait queues resp once the queue has room: an etcd watch of the
// client's own waits for the client, as natively.
func (s *wStream) pushWait(resp *pb.WatchResponse) error {
	for {
		s.mu.Lock()
		if !s.fullLocked(0) || s.err != nil {
			s.pushLocked(resp)
			s.mu.Unlock()
			return nil
		}
		s.mu.Unlock()
		select {
		case <-s.room:
		case <-s.ctx.Done():
			return context.Cause(s.ctx)
		}
	}
}

// fail ends the stream with err (the first one).
func (s *wStream) fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// send sends the queue to the client until the stream ends.
func (s *wStream) send() error {
	for {
		s.mu.Lock()
		batch, err := s.q, s.err
		s.q = nil
		s.mu.Unlock()
		if err != nil {
			return err
		}
		select {
		case s.room <- struct{}{}:
		default:
		}
		for _, resp := range batch {
			if err := s.down.Send(resp); err != nil {
				return err
			}
		}
		if len(batch) > 0 {
			continue
		}
		select {
		case <-s.wake:
		case <-s.ctx.Done():
			return context.Cause(s.ctx)
		}
	}
}

// close ends every watcher of the stream: shared ones leave, own ones end
// with the stream's context.
func (s *wStream) close() {
	s.mu.Lock()
	ws := make([]*wWatcher, 0, len(s.watchers))
	for _, wt := range s.watchers {
		wt.canceled = true
		ws = append(ws, wt)
	}
	s.watchers = map[int64]*wWatcher{}
	g := s.g
	s.mu.Unlock()
	if g != nil {
		for _, wt := range ws {
			g.leave(wt, false)
		}
		g.detach(s)
	}
}

func lastRev(resp *pb.WatchResponse) int64 {
	return resp.Events[len(resp.Events)-1].Kv.ModRevision
}

// view is what wt is sent of a shared response of revision rev: nothing
// for a revision it was sent already or has all its events filtered out, a
// progress notification only if it asked for them and its start revision
// is reached (etcd's progressIfSync). The events are shared, never changed.
func (wt *wWatcher) view(resp *pb.WatchResponse, rev int64) *pb.WatchResponse {
	if len(resp.Events) == 0 {
		if !wt.cr.ProgressNotify || rev+1 < wt.next || rev < wt.cr.StartRevision {
			return nil
		}
		wt.next = max(wt.next, rev+1)
		return &pb.WatchResponse{Header: resp.Header, WatchId: wt.id}
	}
	if rev < wt.next {
		return nil
	}
	// A response of a watch etcd had to catch up holds many revisions:
	// the watcher is sent those from its next on.
	evs := resp.Events
	if evs[0].Kv.ModRevision < wt.next || len(wt.cr.Filters) > 0 {
		evs = make([]*mvccpb.Event, 0, len(resp.Events))
		for _, ev := range resp.Events {
			if ev.Kv.ModRevision >= wt.next && !filtered(wt.cr.Filters, ev) {
				evs = append(evs, ev)
			}
		}
	}
	wt.next = rev + 1
	if len(evs) == 0 {
		return nil
	}
	return &pb.WatchResponse{Header: resp.Header, WatchId: wt.id, Events: evs}
}

func filtered(fs []pb.WatchCreateRequest_FilterType, ev *mvccpb.Event) bool {
	for _, f := range fs {
		if (f == pb.WatchCreateRequest_NOPUT && ev.Type == mvccpb.PUT) || (f == pb.WatchCreateRequest_NODELETE && ev.Type == mvccpb.DELETE) {
			return true
		}
	}
	return false
}
