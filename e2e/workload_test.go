package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/keyspace"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"go.uber.org/zap"
	"google.golang.org/grpc/status"
)

// The workload: lock clients take a few names in a loop and, inside each
// critical section, make two fenced writes (enter and exit) that etcd accepts
// only while the lock key still has the create revision the Lock gave them.
// Campaigners win an election, make fenced writes guarded by leader.rev and
// proclaim, then resign. Every accepted write is an append-only record in
// etcd; the checker judges from those records, not from client memory.

const (
	callDeadline = 5 * time.Second // every client RPC's deadline
	leaseTTL     = 10              // seconds, for workload clients
)

// record is the value of every fenced write.
type record struct {
	Client  int    `json:"c"`
	Key     string `json:"k"` // lock or leader key
	Rev     int64  `json:"r"` // its create revision: the fencing token
	Phase   string `json:"p"` // enter, exit, lead
	Seq     int64  `json:"n"`
	Written int64  `json:"t"` // unix nanos, when the client sent it
}

type workload struct {
	t        *testing.T
	proxies  []string
	kv       *clientv3.Client // straight to etcd (through its client proxies)
	names    []string
	election string

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	workers []*worker
	last    map[string]time.Time // last accepted enter/lead record per name
	marks   map[string]time.Time // first accepted enter/lead record per name since mark
	markAt  time.Time

	acquisitions, accepted, rejected, unknown, electionRecords atomic.Int64
	seq                                                        atomic.Int64
	maxOverrun                                                 atomic.Int64 // ns past deadline, client side
	errMu                                                      sync.Mutex
	errs                                                       map[string]int
}

func newWorkload(t *testing.T, c *cluster, proxies []*proxyProc, names []string, election string) *workload {
	w := &workload{t: t, kv: c.client(), names: names, election: election, last: map[string]time.Time{}, errs: map[string]int{}}
	for _, p := range proxies {
		w.proxies = append(w.proxies, p.addr)
	}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	t.Cleanup(func() {
		w.stop()
		w.kv.Close()
	})
	return w
}

// worker is one client with its own connection to the proxies (gRPC's
// round_robin over both, as clientv3 balances) and its own lease, kept alive
// through the proxies.
type worker struct {
	w     *workload
	id    int
	cli   *clientv3.Client
	locks v3lockpb.LockClient
	elec  epb.ElectionClient

	mu       sync.Mutex
	lease    clientv3.LeaseID
	leases   []clientv3.LeaseID // every lease it has had
	kaCancel context.CancelFunc
	name     string               // the name it is locking, holding or campaigning for
	waiting  bool                 // inside a Lock or Campaign call
	ended    map[string]time.Time // when its interest in a name last ended
	gone     bool                 // disconnected on purpose
}

func (w *workload) newWorker(ttl int64) *worker {
	w.mu.Lock()
	id := len(w.workers)
	wk := &worker{w: w, id: id, ended: map[string]time.Time{}}
	w.workers = append(w.workers, wk)
	w.mu.Unlock()
	wk.connect()
	wk.renewLease(ttl)
	return wk
}

func (wk *worker) connect() {
	cli, err := clientv3.New(clientv3.Config{Endpoints: wk.w.proxies, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		wk.w.t.Fatal(err)
	}
	wk.mu.Lock()
	wk.cli, wk.locks, wk.elec = cli, v3lockpb.NewLockClient(cli.ActiveConnection()), epb.NewElectionClient(cli.ActiveConnection())
	wk.mu.Unlock()
}

// renewLease grants a lease through the proxies and keeps it alive.
func (wk *worker) renewLease(ttl int64) bool {
	for wk.w.ctx.Err() == nil {
		ctx, cancel := context.WithTimeout(wk.w.ctx, callDeadline)
		g, err := wk.cli.Grant(ctx, ttl)
		cancel()
		if err != nil {
			wk.w.noteErr("LeaseGrant", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		kctx, kcancel := context.WithCancel(wk.w.ctx)
		if _, err := wk.cli.KeepAlive(kctx, g.ID); err != nil {
			kcancel()
			continue
		}
		wk.mu.Lock()
		if wk.kaCancel != nil {
			wk.kaCancel()
		}
		wk.lease, wk.kaCancel = g.ID, kcancel
		wk.leases = append(wk.leases, g.ID)
		wk.mu.Unlock()
		return true
	}
	return false
}

// stopKeepAlive lets the lease expire, as a paused client would.
func (wk *worker) stopKeepAlive() {
	wk.mu.Lock()
	defer wk.mu.Unlock()
	if wk.kaCancel != nil {
		wk.kaCancel()
	}
}

func (wk *worker) setInterest(name string, waiting bool) {
	wk.mu.Lock()
	defer wk.mu.Unlock()
	if name == "" && wk.name != "" {
		wk.ended[wk.name] = time.Now()
	}
	wk.name, wk.waiting = name, waiting
}

func (w *workload) noteErr(rpc string, err error) {
	st := status.Convert(err)
	w.errMu.Lock()
	w.errs[fmt.Sprintf("%s %s: %s", rpc, st.Code(), st.Message())]++
	w.errMu.Unlock()
}

// call runs one RPC with the workload deadline and records how far past
// its deadline it returned.
func (w *workload) call(rpc string, f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(w.ctx, callDeadline)
	defer cancel()
	start := time.Now()
	err := f(ctx)
	if over := time.Since(start) - callDeadline; over > 0 {
		for {
			old := w.maxOverrun.Load()
			if int64(over) <= old || w.maxOverrun.CompareAndSwap(old, int64(over)) {
				break
			}
		}
	}
	if err != nil && w.ctx.Err() == nil {
		w.noteErr(rpc, err)
	}
	return err
}

func isSessionGone(err error) bool {
	m := status.Convert(err).Message()
	return m == concurrency.ErrSessionExpired.Error() || m == "etcdserver: requested lease not found"
}

// fenced writes a record only while key still has create revision rev.
func (w *workload) fenced(prefix, name string, wk int, key string, rev int64, phase string) (bool, error) {
	n := w.seq.Add(1)
	r := record{Client: wk, Key: key, Rev: rev, Phase: phase, Seq: n, Written: time.Now().UnixNano()}
	b, _ := json.Marshal(r)
	var resp *clientv3.TxnResponse
	err := w.call("Txn", func(ctx context.Context) (err error) {
		resp, err = w.kv.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", rev)).
			Then(clientv3.OpPut(fmt.Sprintf("%s%s/%08d", prefix, name, n), string(b))).
			Commit()
		return err
	})
	switch {
	case err != nil:
		w.unknown.Add(1)
		return false, err
	case resp.Succeeded:
		w.accepted.Add(1)
		return true, nil
	default:
		w.rejected.Add(1)
		return false, nil
	}
}

func (w *workload) progress(name string) {
	w.mu.Lock()
	now := time.Now()
	w.last[name] = now
	if _, ok := w.marks[name]; !ok && !w.markAt.IsZero() {
		w.marks[name] = now
	}
	w.mu.Unlock()
}

// mark starts recording, per name, the first progress after at.
func (w *workload) mark(at time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.markAt, w.marks = at, map[string]time.Time{}
}

// recovery is how long after the mark the last name had its first
// progress, or false if some name has not progressed yet.
func (w *workload) recovery(names []string) (time.Duration, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var worst time.Duration
	for _, n := range names {
		at, ok := w.marks[n]
		if !ok {
			return 0, false
		}
		worst = max(worst, at.Sub(w.markAt))
	}
	return worst, true
}

// lastProgress is when name last had an accepted enter or lead record.
func (w *workload) lastProgress(name string) time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last[name]
}

// lockLoop locks names until the workload stops.
func (wk *worker) lockLoop() {
	w := wk.w
	for w.ctx.Err() == nil && !wk.isGone() {
		name := w.names[rand.IntN(len(w.names))]
		key, ok := wk.lock(name)
		if ok {
			wk.critical(name, key)
			wk.unlock(key)
		}
		wk.setInterest("", false)
	}
}

func (wk *worker) isGone() bool {
	wk.mu.Lock()
	defer wk.mu.Unlock()
	return wk.gone
}

// lock retries until it holds name, the workload stops, or the worker is
// disconnected. Retries reuse the lease, so they reuse the waiter key.
func (wk *worker) lock(name string) (string, bool) {
	w := wk.w
	for w.ctx.Err() == nil && !wk.isGone() {
		wk.setInterest(name, true)
		wk.mu.Lock()
		lease, locks := wk.lease, wk.locks
		wk.mu.Unlock()
		var resp *v3lockpb.LockResponse
		err := w.call("Lock", func(ctx context.Context) (err error) {
			resp, err = locks.Lock(ctx, &v3lockpb.LockRequest{Name: []byte(name), Lease: int64(lease)})
			return err
		})
		if err == nil {
			wk.setInterest(name, false)
			w.acquisitions.Add(1)
			return string(resp.Key), true
		}
		if isSessionGone(err) {
			wk.renewLease(leaseTTL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	wk.giveUp(name)
	return "", false
}

// giveUp is what a client that stops trying must do: a Lock or Campaign
// granted at the moment the client gave up is held with a response the
// client never read, so it releases its key, name/<lease hex>, itself.
// (A client that is gone cannot; see the disconnect fault.)
func (wk *worker) giveUp(name string) {
	if wk.isGone() {
		return
	}
	wk.mu.Lock()
	key := keyspace.OwnerKey(name, wk.lease)
	wk.mu.Unlock()
	wk.unlock(key)
}

func (wk *worker) critical(name, key string) {
	w := wk.w
	var rev int64
	err := w.call("Get", func(ctx context.Context) error {
		g, err := w.kv.Get(ctx, key)
		if err == nil && len(g.Kvs) > 0 {
			rev = g.Kvs[0].CreateRevision
		}
		return err
	})
	if err != nil || rev == 0 {
		return
	}
	if ok, _ := w.fenced("rec/", name, wk.id, key, rev, "enter"); ok {
		w.progress(name)
	}
	time.Sleep(time.Duration(rand.IntN(3)) * time.Millisecond)
	w.fenced("rec/", name, wk.id, key, rev, "exit")
}

// unlock retries until etcd confirms; a key already gone is success.
func (wk *worker) unlock(key string) {
	w := wk.w
	for tries := 0; tries < 100 && !wk.isGone(); tries++ {
		wk.mu.Lock()
		locks := wk.locks
		wk.mu.Unlock()
		err := w.callFresh("Unlock", func(ctx context.Context) error {
			_, err := locks.Unlock(ctx, &v3lockpb.UnlockRequest{Key: []byte(key)})
			return err
		})
		if err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// callFresh is call on a context that outlives the workload's stop, for
// releasing what a client holds.
func (w *workload) callFresh(rpc string, f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), callDeadline)
	defer cancel()
	err := f(ctx)
	if err != nil && w.ctx.Err() == nil {
		w.noteErr(rpc, err)
	}
	return err
}

// start runs lockers lock clients and campaigners candidates.
func (w *workload) start(lockers, campaigners int) {
	for range lockers {
		wk := w.newWorker(leaseTTL)
		w.wg.Go(wk.lockLoop)
	}
	for range campaigners {
		wk := w.newWorker(leaseTTL)
		w.wg.Go(wk.campaignLoop)
	}
}

// stop ends the workload: loops finish their critical sections and release.
func (w *workload) stop() {
	w.cancel()
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, wk := range w.workers {
		wk.stopKeepAlive()
		wk.cli.Close()
	}
	w.workers = w.workers[:0:0]
}

// disconnectIfWaiting makes a worker that is inside a Lock call for name go
// away: its connection closes mid-call, and it does not come back.
func (wk *worker) disconnectIfWaiting(name string) bool {
	wk.mu.Lock()
	if !wk.waiting || wk.name != name || wk.gone {
		wk.mu.Unlock()
		return false
	}
	wk.gone = true
	wk.ended[wk.name] = time.Now()
	wk.name, wk.waiting = "", false
	cli := wk.cli
	wk.mu.Unlock()
	cli.Close()
	return true
}
