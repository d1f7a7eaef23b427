// Package client is the Go client of coordproxy: Mutex, Semaphore, RWMutex
// and Election over a coordproxy, shaped like etcd's client/v3/concurrency so
// that its users feel at home.
//
// The lease comes from a Session on a clientv3.Client whose endpoints are
// coordproxy replicas: the proxy keeps it alive while this process is there
// and revokes it within the session's grace once the process is gone, so
// what it holds passes on at once (a concurrency.Session works too, and
// then holds until its TTL runs out). The calls go to coordproxy's own API
// (proto/coordproxy/v1) and to etcd's Election service as the proxy serves
// it, on the same connection:
//
//	cli, _ := clientv3.New(clientv3.Config{Endpoints: []string{"127.0.0.1:23790"}})
//	s, _ := client.NewSession(cli, client.WithTTL(30))
//	defer s.Close()
//	m := client.NewMutex(s, "jobs/nightly")
//	if err := m.Lock(ctx); err != nil { ... }
//	// write with m.IsOwner() in the transaction, or pass m.FencingToken() on
//	defer m.Unlock(ctx)
//
// Keys are etcd's: a Mutex here excludes a concurrency.Mutex of the same
// name, an RWMutex a recipes.RWMutex, and an Election is the same election
// as a concurrency.Election. Errors etcd defines come back as
// concurrency's values (errors.Is(err, concurrency.ErrSessionExpired),
// ErrLocked, ErrElectionNotLeader, ErrElectionNoLeader).
package client
