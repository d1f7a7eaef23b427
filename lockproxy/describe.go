package lockproxy

import (
	"context"

	"github.com/coordproxy/coordproxy/answer"
	"github.com/coordproxy/coordproxy/grant"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
)

// Describe reads who holds name (with the lease's TTL left) and who waits,
// in the order they will be granted.
func (l *Locks) Describe(ctx context.Context, req *coordproxyv1.DescribeRequest) (*coordproxyv1.LockDescription, error) {
	if len(req.Name) == 0 {
		return nil, grant.ErrNameMissing
	}
	hdr, held, waiters, waiting, err := answer.Describe(ctx, l.etcd, string(req.Name), 1, req.Limit)
	if err != nil {
		return nil, err
	}
	d := &coordproxyv1.LockDescription{Header: hdr, Waiters: waiters, Waiting: waiting}
	if len(held) > 0 {
		d.Holder = held[0]
	}
	return d, nil
}
