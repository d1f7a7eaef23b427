// Package electionproxy serves etcd's v3election Election service (Campaign,
// Proclaim, Leader, Observe, Resign) over a real etcd cluster, with the key
// layout and transactions of go.etcd.io/etcd/client/v3/concurrency.Election.
//
// Candidates wait in the same per-prefix queue as lock waiters
// (lockproxy.Backend); Observe streams of one election share that queue's
// single etcd watch.
package electionproxy
