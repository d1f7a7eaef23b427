package passthrough

import (
	"context"
	"errors"
	"io"

	"github.com/coordproxy/coordproxy/etcdio"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/proxy/grpcproxy"
	"google.golang.org/grpc"
)

// KV passes etcd's KV service through, so that fenced writes, etcdctl
// and concurrency.Mutex users reach etcd at the same address as Lock and
// Election. Requests go through the proxy's etcd client (and so through its
// --namespace and its request limiter), turned into client operations by
// etcd's own grpc-proxy adapters. With a read cache (readcache.go), the
// serializable reads of single keys it can answer as etcd would are
// answered from it. Errors get etcd's codes back at the proxy's edge
// (proxy/wire.go).
type KV struct {
	pb.UnsafeKVServer
	etcd  *etcdio.Etcd
	ns    string
	cache *ReadCache // nil: none
}

// NewKV returns the KV pass-through; ns is the proxy's namespace (the etcd
// client applies it to every call but RangeStream, which KV applies
// itself); cache may be nil.
func NewKV(etcd *etcdio.Etcd, ns string, cache *ReadCache) *KV {
	return &KV{etcd: etcd, ns: ns, cache: cache}
}

// RangeStream (etcd 3.7) relays etcd's own stream of one range in chunks:
// etcd decides the chunks, counts, limits and errors (a compacted
// revision, a range etcd refuses); only the namespace is applied on the
// way in and taken off the keys on the way out. The etcd client's namespace
// does not stream ranges, so the request goes on the connection as it is.
func (s *KV) RangeStream(r *pb.RangeRequest, stream grpc.ServerStreamingServer[pb.RangeStreamResponse]) error {
	ctx := stream.Context()
	if s.ns != "" {
		if len(r.Key) == 0 && len(r.RangeEnd) == 0 {
			return rpctypes.ErrGRPCEmptyKey // as etcd: under a namespace the key would not be empty
		}
		r.Key, r.RangeEnd = prefixInterval(s.ns, r.Key, r.RangeEnd)
	}
	up, err := pb.NewKVClient(s.etcd.Conn(ctx)).RangeStream(ctx, r)
	if err != nil {
		return err
	}
	for {
		resp, err := up.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if s.ns != "" && resp.RangeResponse != nil {
			for _, kv := range resp.RangeResponse.Kvs {
				stripKV(s.ns, kv)
			}
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// Range passes etcd's KV.Range through, or answers it from the read cache.
func (s *KV) Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	cached := s.cache.serves(ctx, r)
	if cached {
		if resp := s.cache.get(r); resp != nil {
			return resp, nil
		}
	}
	resp, err := s.etcd.For(ctx).Do(ctx, grpcproxy.RangeRequestToOp(r))
	if err != nil {
		return nil, err
	}
	rr := (*pb.RangeResponse)(resp.Get())
	if cached {
		s.cache.fill(r, rr)
	}
	return rr, nil
}

// Put passes etcd's KV.Put through.
func (s *KV) Put(ctx context.Context, r *pb.PutRequest) (*pb.PutResponse, error) {
	resp, err := s.etcd.For(ctx).Do(ctx, grpcproxy.PutRequestToOp(r))
	if err != nil {
		return nil, err
	}
	return (*pb.PutResponse)(resp.Put()), nil
}

// DeleteRange passes etcd's KV.DeleteRange through.
func (s *KV) DeleteRange(ctx context.Context, r *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	resp, err := s.etcd.For(ctx).Do(ctx, grpcproxy.DelRequestToOp(r))
	if err != nil {
		return nil, err
	}
	return (*pb.DeleteRangeResponse)(resp.Del()), nil
}

// Txn passes etcd's KV.Txn through.
func (s *KV) Txn(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	if err := checkTxn(r); err != nil {
		return nil, err
	}
	resp, err := s.etcd.For(ctx).Do(ctx, grpcproxy.TxnRequestToOp(r))
	if err != nil {
		return nil, err
	}
	return (*pb.TxnResponse)(resp.Txn()), nil
}

// Compact compacts etcd's whole history, as it does on etcd: revisions are
// cluster-wide, a namespace has none of its own.
func (s *KV) Compact(ctx context.Context, r *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	var opts []clientv3.CompactOption
	if r.Physical {
		opts = append(opts, clientv3.WithCompactPhysical())
	}
	resp, err := s.etcd.For(ctx).Compact(ctx, r.Revision, opts...)
	if err != nil {
		return nil, err
	}
	return (*pb.CompactionResponse)(resp), nil
}

// checkTxn answers as etcd's own checks (v3rpc checkTxnRequest) do for what
// the proxy must see before etcd does: an operation without a request, which
// etcd's adapters cannot turn into a client operation, and an empty key,
// which a namespace would turn into the namespace's own prefix. Everything
// else (sizes, duplicate keys, too many operations) etcd judges itself.
func checkTxn(r *pb.TxnRequest) error {
	for _, c := range r.Compare {
		if len(c.Key) == 0 {
			return rpctypes.ErrGRPCEmptyKey
		}
	}
	for _, ops := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range ops {
			if err := checkRequestOp(op); err != nil {
				return err
			}
		}
	}
	return nil
}

func checkRequestOp(op *pb.RequestOp) error {
	var key []byte
	switch v := op.GetRequest().(type) {
	case *pb.RequestOp_RequestRange:
		if v.RequestRange == nil {
			return rpctypes.ErrGRPCKeyNotFound
		}
		key = v.RequestRange.Key
	case *pb.RequestOp_RequestPut:
		if v.RequestPut == nil {
			return rpctypes.ErrGRPCKeyNotFound
		}
		key = v.RequestPut.Key
	case *pb.RequestOp_RequestDeleteRange:
		if v.RequestDeleteRange == nil {
			return rpctypes.ErrGRPCKeyNotFound
		}
		key = v.RequestDeleteRange.Key
	case *pb.RequestOp_RequestTxn:
		if v.RequestTxn == nil {
			return rpctypes.ErrGRPCKeyNotFound
		}
		return checkTxn(v.RequestTxn)
	default: // empty operation: etcd's answer
		return rpctypes.ErrGRPCKeyNotFound
	}
	if len(key) == 0 {
		return rpctypes.ErrGRPCEmptyKey
	}
	return nil
}
