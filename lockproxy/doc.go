// Package lockproxy serves etcd's v3lock Lock service (Lock, Unlock) over a
// real etcd cluster, with the key layout and transactions of
// go.etcd.io/etcd/client/v3/concurrency.Mutex, so that coordproxy clients,
// concurrency.Mutex users, etcdctl lock and etcd's native Lock service exclude
// each other on the same etcd.
//
// It also holds what the Election service shares with Lock: a candidacy is a
// place in the same queue as a lock waiter (the key with the lowest create
// revision under name + "/" wins). Backend bundles the etcd client, the shared
// per-prefix watches (Queues), the cleanup of abandoned waiter keys and the
// lease-0 policy, and electionproxy builds on it.
package lockproxy
