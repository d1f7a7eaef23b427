package e2e

import (
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/proxy/proxytest"
)

// The fenced lock and election workload of the fault matrix, without a
// fault, on three-member clusters of the other etcd versions users run
// (proxytest.EtcdVersions; the module's own 3.7 runs in TestFaults): no
// overlap, every name progresses, nothing left behind.
func TestVersions_fencedWorkloadOnEachEtcdVersion(t *testing.T) {
	for _, v := range proxytest.EtcdVersions {
		t.Run("etcd-"+v, func(t *testing.T) {
			c := startClusterOf(t, 3, proxytest.EtcdBinary(t, v))
			ps := startProxies(t, c, 2)
			w := newWorkload(t, c, ps, lockNames, electionName)
			w.start(lockers, campaigners)
			w.waitProgress(t, time.Time{}, time.Minute)
			w.waitProgress(t, time.Now(), time.Minute)
			w.stop()
			names := append(append([]string(nil), w.names...), w.election)
			for _, k := range waitNoKeys(w.kv, names, requestTimeout+ghostGrace) {
				t.Errorf("etcd %s: key left after every client stopped: %s", v, k)
			}
			var locks recordCheck
			for _, n := range w.names {
				locks.add(checkRecords(t, w.kv, "rec/", n))
			}
			election := checkRecords(t, w.kv, "erec/", w.election)
			if locks.Records == 0 || election.Records == 0 {
				t.Errorf("etcd %s: no records to check: locks %+v, election %+v", v, locks, election)
			}
			t.Logf("etcd %s: %d acquisitions, fenced writes %d accepted / %d rejected, %d election records",
				v, w.acquisitions.Load(), w.accepted.Load(), w.rejected.Load(), w.electionRecords.Load())
		})
	}
}
