package electionproxy

import (
	"context"

	"github.com/coordproxy/coordproxy/answer"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
)

// Describe reads the election in one linearizable read: the leader with its
// value and its lease's TTL, then the candidates in the order they would
// lead (up to the request's limit) and how many wait in all.
func (e *Elections) Describe(ctx context.Context, req *coordproxyv1.DescribeRequest) (*coordproxyv1.ElectionDescription, error) {
	if len(req.Name) == 0 {
		return nil, errNameMissing
	}
	hdr, held, candidates, waiting, err := answer.Describe(ctx, e.etcd, string(req.Name), 1, req.Limit)
	if err != nil {
		return nil, err
	}
	d := &coordproxyv1.ElectionDescription{Header: hdr, Candidates: candidates, Waiting: waiting}
	if len(held) > 0 {
		d.Leader = held[0]
	}
	return d, nil
}
