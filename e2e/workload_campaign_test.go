package e2e

import (
	"context"
	"fmt"
	"time"

	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
)

// campaignLoop wins the election, makes fenced writes and proclaims as
// leader, then resigns, until the workload stops.
func (wk *worker) campaignLoop() {
	w := wk.w
	for w.ctx.Err() == nil {
		lk, ok := wk.campaign()
		if !ok {
			wk.setInterest("", false)
			return
		}
		for i := range 3 {
			if ok, _ := w.fenced("erec/", w.election, wk.id, string(lk.Key), lk.Rev, "lead"); ok {
				w.electionRecords.Add(1)
				w.progress(w.election)
			}
			wk.mu.Lock()
			elec := wk.elec
			wk.mu.Unlock()
			w.call("Proclaim", func(ctx context.Context) error {
				_, err := elec.Proclaim(ctx, &epb.ProclaimRequest{Leader: lk, Value: []byte(fmt.Sprintf("%d-%d", wk.id, i))})
				return err
			})
		}
		for tries := 0; tries < 100; tries++ {
			wk.mu.Lock()
			elec := wk.elec
			wk.mu.Unlock()
			if w.callFresh("Resign", func(ctx context.Context) error {
				_, err := elec.Resign(ctx, &epb.ResignRequest{Leader: lk})
				return err
			}) == nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		wk.setInterest("", false)
	}
}

func (wk *worker) campaign() (*epb.LeaderKey, bool) {
	w := wk.w
	for w.ctx.Err() == nil {
		wk.setInterest(w.election, true)
		wk.mu.Lock()
		lease, elec := wk.lease, wk.elec
		wk.mu.Unlock()
		var resp *epb.CampaignResponse
		err := w.call("Campaign", func(ctx context.Context) (err error) {
			resp, err = elec.Campaign(ctx, &epb.CampaignRequest{Name: []byte(w.election), Lease: int64(lease), Value: []byte(fmt.Sprint(wk.id))})
			return err
		})
		if err == nil {
			wk.setInterest(w.election, false)
			return resp.Leader, true
		}
		if isSessionGone(err) {
			wk.renewLease(leaseTTL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	wk.giveUp(w.election)
	return nil, false
}
