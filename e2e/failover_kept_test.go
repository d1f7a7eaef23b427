package e2e

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/internal/clock"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
)

// kept checks each trial of a case whose fault must not end a healthy
// session: the holder goes on writing past since plus its window and a
// second without saying it lost (a session whose resume failed ends within
// its window), and the next holder still waits. Every false loss is
// counted before the test fails.
func kept(t *testing.T, trials []*goTrial, since, window time.Duration) {
	t.Helper()
	lost := map[*goTrial]string{}
	horizon := window + time.Second
	waitFor(t, 30*time.Second, fmt.Sprintf("every holder writing %s after the fault, or lost", horizon), func() bool {
		for _, tr := range trials {
			if _, ok := lost[tr]; ok {
				continue
			}
			select {
			case l, ok := <-tr.h.lines:
				if ok && strings.HasPrefix(l, "LOST") {
					var at int64
					fmt.Sscanf(l, "LOST %d", &at)
					lost[tr] = fmt.Sprintf("%s after the fault: %s", time.Duration(at)-since, l)
					continue
				}
				if !ok {
					lost[tr] = "the holder process exited"
					continue
				}
			default:
			}
			if s := readStamps(tr.stamps); len(s) == 0 || slices.Max(s) <= since+horizon {
				return false
			}
		}
		return true
	})
	for _, tr := range trials {
		if why, ok := lost[tr]; ok {
			t.Errorf("%s: FALSE LOSS: %s", tr.name, why)
		}
		select {
		case <-tr.next.granted:
			t.Errorf("%s: the next holder was granted while the holder holds", tr.name)
		case err := <-tr.next.failed:
			t.Errorf("%s: the next holder failed: %v", tr.name, err)
		default:
		}
	}
	if len(lost) > 0 {
		t.Fatalf("%d false losses out of %d", len(lost), len(trials))
	}
}

// The faults that must not end a healthy session: the replica the holders'
// sessions are on SIGKILLed (they resume through the other within the
// window), and the etcd leader killed. One fault for all the trials of a
// case at once; the holders note their critical section less often.
func TestFailover_aHealthySessionSurvivesAReplicaOrLeaderKill(t *testing.T) {
	c := startCluster(t, 3)
	ps := startProxies(t, c, 2)
	kv := c.client()
	defer kv.Close()
	for _, fault := range []string{"replica SIGKILLed", "etcd leader killed"} {
		t.Run(fault, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			var toB []*proxytest.Relay
			trials := goRound(t, ctx, kv, 0, failoverTrials, func(tr *goTrial) []string {
				if fault != "replica SIGKILLed" {
					return []string{ps[0].addr}
				}
				// Every session opens on ps[0]: the way to ps[1] refuses
				// until they all hold.
				b := proxytest.NewRelay(t, ps[1].addr)
				b.Refuse()
				toB = append(toB, b)
				return []string{ps[0].addr, b.Addr()}
			}, ps[1].addr, sessionTTL, keptWindow, 50*time.Millisecond)
			// Then every holder connects to ps[1] as well, as clients of
			// several replicas are: its sessions' streams stay on ps[0].
			for _, b := range toB {
				b.Accept()
			}
			for _, b := range toB {
				waitFor(t, time.Minute, "a holder connected to the other replica", func() bool { return b.Conns() > 0 })
			}
			at := clock.Now()
			if fault == "replica SIGKILLed" {
				ps[0].kill()
				defer ps[0].start()
			} else {
				l, err := c.leader()
				if err != nil {
					t.Fatal(err)
				}
				c.kill(l)
				c.waitNewLeader(l, time.Minute)
				defer c.restart(l)
			}
			kept(t, trials, at, keptWindow)
			t.Logf("%s: %d holders (window %s) kept holding and writing, no next holder granted", fault, len(trials), keptWindow)
			writeReport(t, "failover_kept_"+strings.ReplaceAll(fault, " ", "_"), map[string]any{"trials": len(trials), "false_losses": 0})
		})
	}
}

// A holder whose replica is cut off from etcd for longer than the lease's
// TTL stops before etcd lets its lease expire: the replica still answers
// its heartbeats, but with the lease's least life in etcd, counted from
// keep-alives etcd no longer answers.
func TestFailover_aHolderWhoseReplicaIsCutOffFromEtcdStopsBeforeTheLeaseExpires(t *testing.T) {
	c := startCluster(t, 3)
	ps := startProxies(t, c, 1)
	// The holders' replica reaches etcd through relays the test cuts.
	var relays []*proxytest.Relay
	var eps []string
	for _, m := range c.members {
		r := proxytest.NewRelay(t, m.clientAddr)
		relays = append(relays, r)
		eps = append(eps, "http://"+r.Addr())
	}
	cut := startProxiesTo(t, eps, 1)[0]
	kv := c.client()
	defer kv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const ttl = 3
	by := map[string]*failovers{}
	for round := range failoverRounds {
		trials := goRound(t, ctx, kv, round, failoverTrials/failoverRounds, func(*goTrial) []string { return []string{cut.addr} }, ps[0].addr, ttl, 0, stampEvery)
		at := clock.Now()
		for _, r := range relays {
			r.Blackhole()
		}
		for _, tr := range trials {
			tr.fault = at
		}
		handedOver(t, ctx, trials, nil, by)
		for _, r := range relays {
			r.Heal()
		}
		waitFor(t, time.Minute, "the cut-off replica ready again", func() bool {
			resp, err := http.Get("http://" + cut.addr + "/readyz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		})
	}
	r := report(by)
	t.Logf("replica cut off from etcd → next holder (TTL %d s): %+v", ttl, r)
	writeReport(t, "failover_replica_cut_off_from_etcd", r)
}
