// Package lockproxy serves etcd's v3lock Lock service (Lock, Unlock) and
// coordproxy's own LockService (Lock with a fencing token, TryLock, Unlock,
// Describe) over a real etcd cluster, with the key layout and transactions
// of go.etcd.io/etcd/client/v3/concurrency.Mutex, so that coordproxy
// clients, concurrency.Mutex users, etcdctl lock and etcd's native Lock
// service exclude each other on the same etcd.
//
// Each call puts its key in the name's queue with Mutex's transaction
// (lock.go) and hands the claim to package grant, which waits for the turn
// on the name's shared watch and confirms it.
package lockproxy
