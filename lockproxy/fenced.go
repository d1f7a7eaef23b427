package lockproxy

import (
	"context"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
)

// Lock is etcd's Lock (the same keys, transaction and waiting) answering
// with the fencing token: the ownership key's create revision, which grows
// with every grant, so that a resource can refuse writes from a holder that
// has since lost the lock (docs/extensions.md).
func (l *Locks) Lock(ctx context.Context, req *coordproxyv1.LockRequest) (*coordproxyv1.Held, error) {
	name, lease, err := lockArgs(req)
	if err != nil {
		return nil, err
	}
	g, err := l.b.lock(ctx, name, lease)
	if err != nil {
		return nil, err
	}
	return held(g, lease), nil
}

// Unlock deletes an ownership key, as the compatible Unlock does.
func (l *Locks) Unlock(ctx context.Context, req *coordproxyv1.UnlockRequest) (*coordproxyv1.UnlockResponse, error) {
	hdr, err := l.b.unlock(ctx, string(req.Key))
	if err != nil {
		return nil, err
	}
	return &coordproxyv1.UnlockResponse{Header: Header(hdr)}, nil
}
