// Package grant is what every primitive (Lock, TryLock, Campaign, semaphore
// Acquire, RLock/WLock) shares between its own etcd transaction and its
// answer. The transaction puts the caller's key in the name's queue and
// yields a Claim; Take (take.go) turns it into a Grant: it waits for the
// turn on the name's shared queue (package queue), confirms it with one
// linearizable read (the post-wait check), removes the key of a caller who
// left or failed (cleanup.go), and counts what it granted as held until the
// key is deleted (hold.go, release.go). The key layout is package
// keyspace's, the lease of a lease-0 call package lease0's, and the answers
// in coordproxy.v1's types package answer's.
package grant
