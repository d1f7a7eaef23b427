package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/internal/clock"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Failover without overlap, as an operator runs it: `coordproxy lock NAME
// -- CMD` (and `coordproxy elect NAME VALUE -- CMD`) holds through one
// replica, a second one waits through the other, and each CMD notes the
// time every 20 ms — a command that cannot check a token. CMD also starts
// a child that does the same (e2e/holder -ticker): every process CMD started
// must stop too.

// cliProc is a running `coordproxy lock` or `elect`.
type cliProc struct {
	cmd    *exec.Cmd
	stderr *proxytest.LockedBuffer
	done   chan struct{}
	code   int
}

func startCLIProc(t *testing.T, bin string, args ...string) *cliProc {
	t.Helper()
	p := &cliProc{stderr: &proxytest.LockedBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.cmd.Wait()
		p.code = p.cmd.ProcessState.ExitCode()
		close(p.done)
	}()
	// Killed alone: its supervisor then kills its command.
	t.Cleanup(func() { p.cmd.Process.Kill(); <-p.done })
	return p
}

// cliTrial is one name: a CLI holding it and one waiting.
type cliTrial struct {
	kind, name         string // kind: lock or elect
	stamps, nextStamps string
	holder, next       *cliProc
	relay              *proxytest.Relay
	fault              time.Duration
}

// cliArgs runs `coordproxy KIND` on name through addr with the holder
// program's ticker as its command, noting its run in stamps.
func cliArgs(t *testing.T, kind, addr, name, value, stamps string) []string {
	args := []string{kind, "--addr", addr, "--ttl", fmt.Sprint(sessionTTL), name}
	if kind == "elect" {
		args = append(args, value)
	}
	return append(args, "--", mustHolderBinary(t), "-ticker", stamps)
}

func TestFailover_aCLIThatLosesItsLockHasStoppedItsCommandBeforeTheNextRuns(t *testing.T) {
	_, bin := mustBinaries(t)
	c := startCluster(t, 3)
	ps := startProxies(t, c, 2)
	kv := c.client()
	defer kv.Close()
	reports := map[string]any{}
	for _, fault := range []string{"CLI SIGKILLed alone", "reset and refused", "blackhole"} {
		for _, kind := range []string{"lock", "elect"} {
			t.Run(fault+"/"+kind, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
				defer cancel()
				relayed := fault != "CLI SIGKILLed alone"
				var f failovers
				for round := range cliRounds {
					trials := cliRound(t, kv, bin, kind, round, ps[0].addr, ps[1].addr, relayed)
					for _, tr := range trials {
						tr.fault = clock.Now()
						switch fault {
						case "CLI SIGKILLed alone":
							tr.holder.cmd.Process.Signal(syscall.SIGKILL) // not its command
						case "reset and refused":
							tr.relay.Refuse()
							tr.relay.Reset()
						case "blackhole":
							tr.relay.Blackhole()
						}
						time.Sleep(faultSpacing)
					}
					cliHandedOver(t, ctx, trials, relayed, &f)
				}
				r := f.stats()
				t.Logf("%s, coordproxy %s → the next command (window 750 ms, TTL %d s): %+v", fault, kind, sessionTTL, r)
				reports[fault+" "+kind] = r
			})
		}
	}
	writeReport(t, "failover_cli", reports)
}

// cliRounds: a CLI trial runs five processes at the least (two CLIs, the
// supervisor, the command and its child), so ten at a time.
const cliRounds = 2

// cliRound starts failoverTrials/cliRounds names of kind, each held by a
// CLI through holderAddr (through a relay of its own if relayed) with one
// waiting through nextAddr.
func cliRound(t *testing.T, kv *clientv3.Client, bin, kind string, round int, holderAddr, nextAddr string, relayed bool) []*cliTrial {
	t.Helper()
	dir := t.TempDir()
	var trials []*cliTrial
	for i := range failoverTrials / cliRounds {
		name := fmt.Sprintf("%s-%d-%d", strings.ReplaceAll(strings.ToLower(t.Name()), "/", "-"), round, i)
		tr := &cliTrial{kind: kind, name: name, stamps: filepath.Join(dir, name+".holder"), nextStamps: filepath.Join(dir, name+".next")}
		addr := holderAddr
		if relayed {
			tr.relay = proxytest.NewRelay(t, holderAddr)
			addr = tr.relay.Addr()
		}
		tr.holder = startCLIProc(t, bin, cliArgs(t, kind, addr, name, "holder", tr.stamps)...)
		trials = append(trials, tr)
	}
	for _, tr := range trials {
		waitFor(t, time.Minute, tr.name+"'s command running", func() bool { return len(readStamps(tr.stamps)) > 0 })
		tr.next = startCLIProc(t, bin, cliArgs(t, kind, nextAddr, tr.name, "next", tr.nextStamps)...)
	}
	for _, tr := range trials {
		waitKeyCount(t, kv, tr.name+"/", 2)
	}
	return trials
}

// cliHandedOver checks each trial: the next CLI's command runs, the old
// CLI has stopped its command (or, killed, had it stopped), and the old
// command's — and its child's — last stamp came before the new command's
// first. The old stamps are read once the new command has run for 200 ms:
// an old command still running would have stamped after the new one began.
func cliHandedOver(t *testing.T, ctx context.Context, trials []*cliTrial, exits bool, f *failovers) {
	t.Helper()
	var wg sync.WaitGroup
	for _, tr := range trials {
		for deadline := time.Now().Add(time.Minute); len(readStamps(tr.nextStamps, tr.nextStamps+".child")) < 10; {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the next command did not run within a minute\nthe next CLI:\n%s\nthe old CLI:\n%s", tr.name, tr.next.stderr, tr.holder.stderr)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if exits {
			select {
			case <-tr.holder.done:
				if tr.holder.code != 1 || !strings.Contains(tr.holder.stderr.String(), "lost") {
					t.Errorf("%s: the old CLI exited %d, want 1 saying it lost the lock\n%s", tr.name, tr.holder.code, tr.holder.stderr)
				}
			case <-ctx.Done():
				t.Fatalf("%s: the old CLI did not exit\n%s", tr.name, tr.holder.stderr)
			}
		}
		first := slices.Min(readStamps(tr.nextStamps, tr.nextStamps+".child"))
		last := slices.Max(readStamps(tr.stamps, tr.stamps+".child"))
		if !f.add(tr.fault, last, first) {
			t.Errorf("%s: OVERLAP: the old command ran %s after the next one began", tr.name, last-first)
		}
		wg.Go(func() { tr.next.cmd.Process.Signal(syscall.SIGTERM); <-tr.next.done })
	}
	wg.Wait()
}
