// Package electionproxy serves etcd's v3election Election service (Campaign,
// Proclaim, Leader, Observe, Resign) and coordproxy's own ElectionService
// (Observe with leader loss, Describe) over a real etcd cluster, with the key
// layout and transactions of go.etcd.io/etcd/client/v3/concurrency.Election.
//
// A candidacy is a place in the name's queue like a lock waiter's: Campaign
// hands its claim to package grant, which waits on the name's shared watch;
// Observe streams of one election follow that same queue (observe.go).
package electionproxy
