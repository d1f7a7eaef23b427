package etcdio

import (
	"context"
	"errors"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Every lease the proxy grants or revokes for a caller goes through Grant,
// GrantRequest, Revoke or RevokeRequest, so that what must happen then is
// said once, in LeaseHooks, and no caller has to remember it.

// LeaseHooks is what happens when a lease is granted or revoked through the
// proxy (a LeaseGrant or LeaseRevoke, a session, a call with lease 0).
type LeaseHooks struct {
	// Granting runs before a lease is asked of etcd; an error refuses the
	// grant before anything is sent (package quota's lease quota).
	Granting []func(ctx context.Context) error
	// Granted runs before the caller learns of the lease (the owner
	// record of package authz); if it fails the lease is revoked, as
	// nobody will use it, and the grant fails with its error.
	Granted []func(ctx context.Context, lease clientv3.LeaseID) error
	// Revoked runs after a revoke etcd answered without error: the keys on
	// the lease are gone (grant's holders, authz's owners).
	Revoked []func(lease int64)
}

// OnLeaseGranting adds f to LeaseHooks.Granting. Add before serving.
func (e *Etcd) OnLeaseGranting(f func(ctx context.Context) error) {
	e.hooks.Granting = append(e.hooks.Granting, f)
}

// OnLeaseGranted adds f to LeaseHooks.Granted. Add before serving.
func (e *Etcd) OnLeaseGranted(f func(ctx context.Context, lease clientv3.LeaseID) error) {
	e.hooks.Granted = append(e.hooks.Granted, f)
}

// OnLeaseRevoked adds f to LeaseHooks.Revoked. Add before serving.
func (e *Etcd) OnLeaseRevoked(f func(lease int64)) {
	e.hooks.Revoked = append(e.hooks.Revoked, f)
}

// Grant grants a lease of ttl seconds for the caller on ctx.
func (e *Etcd) Grant(ctx context.Context, ttl int64) (*clientv3.LeaseGrantResponse, error) {
	if err := e.granting(ctx); err != nil {
		return nil, err
	}
	resp, err := e.For(ctx).Grant(ctx, ttl)
	if err != nil {
		return nil, err
	}
	if err := e.granted(ctx, resp.ID); err != nil {
		return nil, err
	}
	return resp, nil
}

// GrantRequest sends etcd's own LeaseGrant request (the pass-through's: the
// client may choose the ID) for the caller on ctx.
func (e *Etcd) GrantRequest(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	if err := e.granting(ctx); err != nil {
		return nil, err
	}
	resp, err := pb.NewLeaseClient(e.Conn(ctx)).LeaseGrant(ctx, r)
	if err == nil && resp.Error == "" {
		err = e.granted(ctx, clientv3.LeaseID(resp.ID))
	}
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// Revoke revokes lease for the caller on ctx; the hooks run for a lease
// etcd no longer has too (its keys are gone as well).
func (e *Etcd) Revoke(ctx context.Context, lease clientv3.LeaseID) (*clientv3.LeaseRevokeResponse, error) {
	resp, err := e.For(ctx).Revoke(ctx, lease)
	if err == nil || errors.Is(err, rpctypes.ErrLeaseNotFound) {
		e.revoked(int64(lease))
	}
	return resp, err
}

// RevokeRequest sends etcd's own LeaseRevoke request for the caller on ctx.
func (e *Etcd) RevokeRequest(ctx context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	resp, err := pb.NewLeaseClient(e.Conn(ctx)).LeaseRevoke(ctx, r)
	if err == nil {
		e.revoked(r.ID)
	}
	return resp, err
}

func (e *Etcd) granting(ctx context.Context) error {
	for _, f := range e.hooks.Granting {
		if err := f(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (e *Etcd) granted(ctx context.Context, lease clientv3.LeaseID) error {
	for _, f := range e.hooks.Granted {
		if err := f(ctx, lease); err != nil {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.timeout)
			e.For(ctx).Revoke(rctx, lease)
			cancel()
			e.revoked(int64(lease))
			return err
		}
	}
	return nil
}

func (e *Etcd) revoked(lease int64) {
	for _, f := range e.hooks.Revoked {
		f(lease)
	}
}
