package proxy_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/keyspace"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// The harness runs one scenario against a target (etcd's native services or
// coordproxy, both over the same real etcd) and records every outcome in a
// normalized form: names carry a per-run prefix, lease IDs become L1, L2...
// in order of appearance, revisions count from the scenario's start, and
// header cluster and member IDs are checked against etcd's own. Two runs of a
// scenario must then record the same lines.

const waitBound = 15 * time.Second

type target struct {
	name string
	conn *grpc.ClientConn
}

type run struct {
	t      *testing.T
	ctx    context.Context
	tag    string
	prefix string
	kv     *clientv3.Client // straight to etcd, for setup and inspection
	lock   v3lockpb.LockClient
	elec   v3electionpb.ElectionClient
	lease  pb.LeaseClient
	conn   *grpc.ClientConn // the target's, for KV and Watch

	rev0    int64
	cluster uint64
	member  uint64

	mu     sync.Mutex
	lines  []string
	leases map[int64]string
}

func newRun(t *testing.T, tg target, kv *clientv3.Client, scenario string) *run {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	r := &run{
		t: t, ctx: ctx, tag: tg.name, kv: kv,
		prefix: fmt.Sprintf("%s-%s-", scenario, tg.name),
		lock:   v3lockpb.NewLockClient(tg.conn),
		elec:   v3electionpb.NewElectionClient(tg.conn),
		lease:  pb.NewLeaseClient(tg.conn),
		conn:   tg.conn,
		leases: map[int64]string{},
	}
	resp, err := kv.Get(ctx, "rev0-probe")
	if err != nil {
		t.Fatal(err)
	}
	r.rev0, r.cluster, r.member = resp.Header.Revision, resp.Header.ClusterId, resp.Header.MemberId
	return r
}

// name is a lock or election name private to this run.
func (r *run) name(s string) string { return r.prefix + s }

func (r *run) record(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, fmt.Sprintf(format, args...))
}

// grant grants a lease directly at etcd and names it.
func (r *run) grant(ttl int64) int64 {
	resp, err := r.kv.Grant(r.ctx, ttl)
	if err != nil {
		r.t.Fatal(err)
	}
	r.leaseLabel(int64(resp.ID))
	return int64(resp.ID)
}

func (r *run) leaseLabel(id int64) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if id == 0 {
		return "0"
	}
	if l, ok := r.leases[id]; ok {
		return l
	}
	l := fmt.Sprintf("L%d", len(r.leases)+1)
	r.leases[id] = l
	return l
}

// outcome records the result of one call.
func (r *run) outcome(step string, m proto.Message, err error) {
	if err != nil {
		st := status.Convert(err)
		r.record("%s: error code=%s msg=%q", step, st.Code(), r.text(st.Message()))
		return
	}
	r.record("%s: ok %s", step, r.normalize(m))
}

// text replaces this run's prefix and lease IDs in a string.
func (r *run) text(s string) string {
	s = strings.ReplaceAll(s, r.prefix, "<ns>-")
	// an ownership key ends in the lease in hex
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		if _, lease, ok := keyspace.ParseOwnerKey(s); ok {
			s = s[:i+1] + r.leaseLabel(int64(lease))
		}
	}
	return s
}

func (r *run) normalize(m proto.Message) string {
	if m == nil {
		return "<nil>"
	}
	m = proto.Clone(m)
	var fields []string
	r.walk("", m.ProtoReflect(), &fields)
	return "{" + strings.Join(fields, " ") + "}"
}

func (r *run) walk(path string, m protoreflect.Message, out *[]string) {
	fds := m.Descriptor().Fields()
	for i := range fds.Len() {
		fd := fds.Get(i)
		if !m.Has(fd) {
			continue
		}
		name := path + string(fd.Name())
		v := m.Get(fd)
		switch {
		case fd.IsList():
			l := v.List()
			for j := range l.Len() {
				if fd.Kind() == protoreflect.MessageKind {
					r.walk(fmt.Sprintf("%s[%d].", name, j), l.Get(j).Message(), out)
				} else {
					*out = append(*out, fmt.Sprintf("%s[%d]=%s", name, j, r.scalar(fd, l.Get(j))))
				}
			}
		case fd.Kind() == protoreflect.MessageKind:
			r.walk(name+".", v.Message(), out)
		default:
			*out = append(*out, name+"="+r.scalar(fd, v))
		}
	}
}

func (r *run) scalar(fd protoreflect.FieldDescriptor, v protoreflect.Value) string {
	switch fd.Name() {
	case "revision", "rev", "create_revision", "mod_revision", "compact_revision":
		if n := v.Int(); n > 0 {
			return fmt.Sprintf("rev0+%d", n-r.rev0)
		}
	case "cluster_id":
		if v.Uint() == r.cluster {
			return "etcd"
		}
	case "member_id":
		if v.Uint() == r.member {
			return "etcd"
		}
	case "lease", "ID":
		return r.leaseLabel(v.Int())
	case "TTL":
		// the remaining TTL ticks while the test runs
		if n := v.Int(); n > 0 {
			return "positive"
		}
	}
	switch fd.Kind() {
	case protoreflect.BytesKind:
		return fmt.Sprintf("%q", r.text(string(v.Bytes())))
	case protoreflect.StringKind:
		return fmt.Sprintf("%q", r.text(v.String()))
	}
	return v.String()
}

// keys records every key under this run's names, straight from etcd.
func (r *run) keys(step string) {
	resp, err := r.kv.Get(r.ctx, r.prefix, clientv3.WithPrefix())
	if err != nil {
		r.t.Fatal(err)
	}
	var ks []string
	for _, kv := range resp.Kvs {
		ks = append(ks, r.kvText(kv))
	}
	sort.Strings(ks)
	r.record("%s: keys [%s]", step, strings.Join(ks, ", "))
}

func (r *run) kvText(kv *mvccpb.KeyValue) string {
	return r.normalize(kv)
}

// waitKeys waits until n keys exist under name's prefix: the fence that
// orders a scenario's steps without sleeping.
func (r *run) waitKeys(name string, n int) {
	r.t.Helper()
	deadline := time.Now().Add(waitBound)
	for {
		resp, err := r.kv.Get(r.ctx, keyspace.Prefix(name), clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			r.t.Fatal(err)
		}
		if int(resp.Count) == n {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("%s: %d keys under %q, want %d", r.tag, resp.Count, name, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// pending is a call running in the background.
type pending struct {
	r    *run
	step string
	call *proxytest.Call
	m    proto.Message
}

func (r *run) async(step string, call func(ctx context.Context) (proto.Message, error)) *pending {
	p := &pending{r: r, step: step}
	p.call = proxytest.Go(func() (err error) {
		p.m, err = call(r.ctx)
		return err
	})
	return p
}

// still records whether the call is still running: a waiter must be.
func (p *pending) still() {
	if p.call.Returned() {
		p.r.record("%s: returned early", p.step)
	} else {
		p.r.record("%s: waiting", p.step)
	}
}

func (p *pending) wait() (proto.Message, error) {
	select {
	case <-p.call.Done():
	case <-time.After(waitBound):
		p.r.t.Fatalf("%s: %s did not return", p.r.tag, p.step)
	}
	p.r.outcome(p.step, p.m, p.call.Err())
	return p.m, p.call.Err()
}

// observer is an Observe stream.
type observer struct {
	r      *run
	step   string
	cancel context.CancelFunc
	msgs   chan *v3electionpb.LeaderResponse
	errc   chan error
}

func (r *run) observe(step, name string) *observer {
	ctx, cancel := context.WithCancel(r.ctx)
	s, err := r.elec.Observe(ctx, &v3electionpb.LeaderRequest{Name: []byte(name)})
	if err != nil {
		r.t.Fatal(err)
	}
	o := &observer{r: r, step: step, cancel: cancel, msgs: make(chan *v3electionpb.LeaderResponse, 1024), errc: make(chan error, 1)}
	go func() {
		for {
			m, err := s.Recv()
			if err != nil {
				o.errc <- err
				return
			}
			o.msgs <- m
		}
	}()
	r.t.Cleanup(cancel)
	return o
}

// next records the next message of the stream.
func (o *observer) next() *v3electionpb.LeaderResponse {
	select {
	case m := <-o.msgs:
		o.r.outcome(o.step, m, nil)
		return m
	case err := <-o.errc:
		o.r.outcome(o.step, nil, err)
		return nil
	case <-time.After(waitBound):
		o.r.t.Fatalf("%s: %s: no message", o.r.tag, o.step)
		return nil
	}
}

func clientV3Lease(id int64) clientv3.LeaseID { return clientv3.LeaseID(id) }
