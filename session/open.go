package session

import (
	"cmp"
	"context"
	"fmt"
	"time"

	"github.com/coordproxy/coordproxy/answer"
	"github.com/coordproxy/coordproxy/etcdio"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Opening a session: a new lease, or one resumed here (from another
// replica, or after this one restarted), with its settings checked.

// open grants or resumes the first message's lease, writes the record and
// starts keeping the lease alive. Its etcd requests are bounded by the
// request timeout: a client that waits forever must not hold it forever.
func (s *Service) open(ctx context.Context, first *coordproxyv1.SessionRequest) (*session, *coordproxyv1.SessionResponse, error) {
	ss, err := s.settings(first)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.etcd.RequestTimeout())
	defer cancel()
	cli := s.etcd.For(ctx)
	if first.Ttl > 0 {
		if ss.grace > time.Duration(first.Ttl)*time.Second {
			return nil, nil, errGrace
		}
		sent := time.Now()
		g, err := s.etcd.Grant(ctx, first.Ttl)
		if err != nil {
			return nil, nil, err
		}
		ss.lease = g.ID
		rec := RecordKey(ss.lease)
		t, err := s.etcd.SendTxn(ctx, etcdio.Txn{If: []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(rec), "=", 0)},
			Then: []clientv3.Op{clientv3.OpPut(rec, ss.id, clientv3.WithLease(ss.lease))}, Prefix: rec})
		if err != nil {
			s.revoke(ctx, ss.lease) // nobody would keep it: leave nothing behind
			return nil, nil, err
		}
		ss.kept = s.etcd.KeepLease(ctx, ss.lease, g.TTL, sent.Add(time.Duration(g.TTL)*time.Second))
		return ss, &coordproxyv1.SessionResponse{Header: answer.Header(t.Header), Lease: int64(ss.lease), Ttl: g.TTL}, nil
	}
	ss.lease = clientv3.LeaseID(first.Lease)
	if ss.window > 0 {
		return s.resume(ctx, ss)
	}
	sent := time.Now()
	ttl, err := cli.TimeToLive(ctx, ss.lease)
	if err != nil {
		return nil, nil, err
	}
	if ttl.TTL <= 0 {
		return nil, nil, rpctypes.ErrGRPCLeaseNotFound
	}
	if ss.grace > time.Duration(ttl.GrantedTTL)*time.Second {
		return nil, nil, errGrace
	}
	t, err := s.adopt(ctx, ss)
	if err != nil {
		return nil, nil, err
	}
	// etcd counts the TTL left down to whole seconds: a lower bound from
	// the request's send.
	ss.kept = s.etcd.KeepLease(ctx, ss.lease, ttl.TTL, sent.Add(time.Duration(ttl.TTL)*time.Second))
	return ss, &coordproxyv1.SessionResponse{Header: answer.Header(t.Header), Lease: int64(ss.lease), Ttl: ttl.TTL}, nil
}

// resume resumes a heartbeating session on its lease. A replica that died
// leaves its sessions' resumes a window to happen in, all at once on the
// other replicas, so a resume costs etcd as little as it can: the adopt
// goes in a batch with the others (group commit), and instead of reading
// the lease's TTL the proxy starts keeping it alive — one message on the
// keep-alive streams it shares with every session — whose answer gives the
// TTL, from the keep-alive's send a bound of the lease's life.
func (s *Service) resume(ctx context.Context, ss *session) (*session, *coordproxyv1.SessionResponse, error) {
	start := time.Now()
	kept := s.etcd.KeepLease(ctx, ss.lease, 0, time.Time{})
	var t *clientv3.TxnResponse
	var adoptErr error
	var adoptTook time.Duration
	adopted := make(chan struct{})
	go func() { t, adoptErr = s.adopt(ctx, ss); adoptTook = time.Since(start); close(adopted) }()
	err := kept.Known(ctx)
	knownTook := time.Since(start)
	<-adopted
	s.log.Debug("session resume", "lease", fmt.Sprintf("%x", int64(ss.lease)), "keepalive", knownTook, "adopt", adoptTook, "error", cmp.Or(err, adoptErr))
	if err == nil {
		err = adoptErr
	}
	if err != nil {
		kept.Stop()
		return nil, nil, err
	}
	ss.kept = kept
	return ss, &coordproxyv1.SessionResponse{Header: answer.Header(t.Header), Lease: int64(ss.lease), Ttl: kept.TTL()}, nil
}

// adopt writes the session record naming ss's stream unless a proxy has
// decided to revoke the lease (a put on a lease that is gone fails: etcd's
// "lease not found").
func (s *Service) adopt(ctx context.Context, ss *session) (*clientv3.TxnResponse, error) {
	rec := RecordKey(ss.lease)
	put := clientv3.OpPut(rec, ss.id, clientv3.WithLease(ss.lease))
	t, err := s.etcd.SendTxn(ctx, etcdio.Txn{
		If:     []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(rec), "=", 0)},
		Then:   []clientv3.Op{put},
		Else:   []clientv3.Op{clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.Value(rec), "!=", revoking)}, []clientv3.Op{put}, nil)},
		Prefix: rec,
	})
	if err != nil {
		return nil, err
	}
	if !t.Succeeded && !t.Responses[0].GetResponseTxn().Succeeded {
		return nil, rpctypes.ErrGRPCLeaseNotFound // being revoked
	}
	return t, nil
}

// settings checks the first message's and makes the session of it.
func (s *Service) settings(first *coordproxyv1.SessionRequest) (*session, error) {
	if first.Close || first.Heartbeat != 0 || (first.Ttl > 0) == (first.Lease > 0) || first.Ttl < 0 || first.Lease < 0 {
		return nil, errOpen
	}
	ss := &session{grace: DefaultGrace, id: fmt.Sprintf("%s-%d", s.instance, s.streams.Add(1)), lockDelay: s.cfg.LockDelay}
	if first.WindowMs != 0 {
		ss.window = time.Duration(first.WindowMs) * time.Millisecond
		if ss.window < MinWindow || ss.window > MaxWindow {
			return nil, errWindow
		}
		if first.GraceMs != nil {
			return nil, errGraceBeat
		}
	}
	if first.GraceMs != nil {
		ss.grace = time.Duration(*first.GraceMs) * time.Millisecond
		if ss.grace < 0 {
			return nil, errGrace
		}
	}
	d := time.Duration(first.LockDelayMs) * time.Millisecond
	if d < 0 || d > MaxLockDelay {
		return nil, errLockDelay
	}
	ss.lockDelay = max(ss.lockDelay, d)
	return ss, nil
}
