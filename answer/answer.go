// Package answer builds coordproxy.v1's answers from etcd's: response
// headers, keys, holds, and the description of a name's queue (Describe).
// The services that answer with coordproxy.v1's types use it; the layers
// below them (grant, etcdio) know nothing of that API.
package answer

import (
	"github.com/coordproxy/coordproxy/grant"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Held is g, on lease, in coordproxy's API: its key, and its create
// revision as the fencing token.
func Held(g grant.Grant, lease clientv3.LeaseID) *coordproxyv1.Held {
	return &coordproxyv1.Held{Header: Header(g.Header), Key: []byte(g.Key), FencingToken: g.Rev, Lease: int64(lease)}
}

// KeyInfo is kv as a key of coordproxy's API.
func KeyInfo(kv *mvccpb.KeyValue) *coordproxyv1.Key {
	return &coordproxyv1.Key{Key: kv.Key, Lease: kv.Lease, CreateRevision: kv.CreateRevision,
		ModRevision: kv.ModRevision, Value: kv.Value}
}

// Header is etcd's response header in coordproxy's API.
func Header(h *pb.ResponseHeader) *coordproxyv1.ResponseHeader {
	return &coordproxyv1.ResponseHeader{ClusterId: h.GetClusterId(), MemberId: h.GetMemberId(),
		Revision: h.GetRevision(), RaftTerm: h.GetRaftTerm()}
}
