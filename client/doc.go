// Package client is the Go client of coordproxy: Mutex, Semaphore, RWMutex
// and Election over a coordproxy, shaped like etcd's client/v3/concurrency so
// that its users feel at home.
//
// The lease comes from a Session on a clientv3.Client whose endpoints are
// coordproxy replicas: the session heartbeats, the proxy revokes the lease a
// window (750 ms) after the last heartbeat it received, and the session
// knows from its own clock until when it is safe (SafeUntil, Remaining) and
// ends there (Done) — so what a crashed process held passes on within about
// a window, and never before the holder itself concluded that it lost it (a
// concurrency.Session works too, and then holds until its TTL runs out).
// The calls go to coordproxy's own API (proto/coordproxy/v1) and to etcd's
// Election service as the proxy serves it, on the same connection:
//
//	cli, _ := clientv3.New(clientv3.Config{Endpoints: []string{"127.0.0.1:23790"}})
//	s, _ := client.NewSession(cli, client.WithTTL(30))
//	defer s.Close()
//	m := client.NewMutex(s, "jobs/nightly")
//	if err := m.Lock(ctx); err != nil { ... }
//	// before each write: if s.Remaining() <= 0 { stop }; and for a resource
//	// that can check it, m.IsOwner() in the transaction or m.FencingToken()
//	defer m.Unlock(ctx)
//
// On a Session, every wait for a grant (Lock, TryLock, Acquire, RLock,
// Campaign) ends when the Session does, with its error (ErrSessionLost once
// its window passed), and a grant that comes back after the window passed
// returns that error instead of success.
//
// Keys are etcd's: a Mutex here excludes a concurrency.Mutex of the same
// name, an RWMutex a recipes.RWMutex, and an Election is the same election
// as a concurrency.Election. Errors etcd defines come back as
// concurrency's values (errors.Is(err, concurrency.ErrSessionExpired),
// ErrLocked, ErrElectionNotLeader, ErrElectionNoLeader).
package client
