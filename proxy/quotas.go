package proxy

import (
	"context"

	"github.com/coordproxy/coordproxy/policy"
	"github.com/coordproxy/coordproxy/quota"
)

// The quotas of the policy file (package quota): the edge begins a
// quota.Call for every call, reserves what its method may take, and ends
// it when the call does; etcdio's LeaseHooks count the leases granted,
// grant's holders the keys held, quota.WatchStream the watches.

// acquisitions are the methods that make their caller hold a key, and
// whether they may wait for it.
var acquisitions = map[string]bool{
	"/v3lockpb.Lock/Lock":                     true,
	"/v3electionpb.Election/Campaign":         true,
	"/coordproxy.v1.LockService/Lock":         true,
	"/coordproxy.v1.LockService/TryLock":      false,
	"/coordproxy.v1.SemaphoreService/Acquire": true,
	"/coordproxy.v1.RWLockService/RLock":      true,
	"/coordproxy.v1.RWLockService/WLock":      true,
}

const (
	sessionMethod = "/coordproxy.v1.SessionService/KeepAlive"
	watchMethod   = "/etcdserverpb.Watch/Watch"
)

func (s *Server) newQuotas(rules *policy.Store) *quota.Quotas {
	q := quota.New(rules, s.cfg.Registry, s.log)
	s.access.OnLeaseGranting(q.LeaseGranting)
	s.access.OnLeaseGranted(q.LeaseGranted)
	s.access.OnLeaseRevoked(q.LeaseRevoked)
	q.SetLiveLeases(func(ctx context.Context) (map[int64]bool, error) {
		resp, err := s.access.Own().Leases(ctx)
		if err != nil {
			return nil, err
		}
		live := make(map[int64]bool, len(resp.Leases))
		for _, l := range resp.Leases {
			live[int64(l.ID)] = true
		}
		return live, nil
	})
	return q
}

// reserve reserves what a call of method may take: an acquisition a held
// key (and a waiting call, if it may wait), a session stream a session.
func reserve(ctx context.Context, c *quota.Call, method string) error {
	if waits, ok := acquisitions[method]; ok {
		if waits {
			if err := c.Take(ctx, quota.Waiting); err != nil {
				return err
			}
		}
		return c.Take(ctx, quota.Held)
	}
	if method == sessionMethod {
		return c.Take(ctx, quota.Sessions)
	}
	return nil
}
