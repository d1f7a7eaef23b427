// Package queue keeps, for each key prefix that a call waits on, one synced
// etcd watch and from it every key under the prefix in create-revision
// order: the queue of a lock, election, semaphore or read/write lock name.
// Waiters block on it until their turn comes (wait.go) and Observe streams
// follow its first key (observe.go); one Registry shares a queue among all
// of a proxy's calls on the prefix (registry.go).
//
// concurrency.Mutex and Election wait for each predecessor with a watch that
// starts at the Get's header revision. etcd treats such a watch as unsynced
// and only catches it up on its 100 ms sync loop, so every contended
// hand-off stalls, and every waiter costs etcd one watcher. A queue replaces
// that waiting, never the transactions, and wakes exactly the waiter whose
// predecessor went away.
//
// A queue only reads etcd. Whether a turn that the view shows is really
// there is the caller's to confirm with a linearizable read (package grant).
package queue
