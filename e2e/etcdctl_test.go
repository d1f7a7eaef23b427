package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/proxy/proxytest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// etcd's own etcdctl, pointed at the proxy, locks, elects and reports
// status through the KV, Watch, Lease and Maintenance pass-through, and
// excludes (and is excluded by) callers of the proxy's Lock and Election
// services on the same names: concurrency's keys and transactions are one
// protocol whichever way they reach etcd.

const (
	occupyEnv  = "COORDPROXY_E2E_OCCUPY" // the proxy's address, for occupyMain
	occupyName = "COORDPROXY_E2E_OCCUPY_NAME"
	occupyWho  = "COORDPROXY_E2E_OCCUPY_WHO"
)

// occupy is one critical section: while lockKey exists (the caller holds the
// lock), it claims name's occupant key, which must be free, records the
// section, and frees the key again. A claim that finds the key taken is an
// overlap of two holders.
func occupy(ctx context.Context, kv *clientv3.Client, lockKey, name, who string) error {
	occ := "occupant/" + name
	resp, err := kv.Txn(ctx).
		If(clientv3.Compare(clientv3.Version(lockKey), ">", 0), clientv3.Compare(clientv3.Version(occ), "=", 0)).
		Then(clientv3.OpPut(occ, who), clientv3.OpPut("sections/"+name+"/"+who, lockKey)).
		Else(clientv3.OpGet(occ)).Commit()
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return fmt.Errorf("overlap: %s holds %s but the occupant key is %v", who, lockKey, resp.Responses[0].GetResponseRange().Kvs)
	}
	time.Sleep(5 * time.Millisecond)
	resp, err = kv.Txn(ctx).If(clientv3.Compare(clientv3.Value(occ), "=", who)).Then(clientv3.OpDelete(occ)).Commit()
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return fmt.Errorf("overlap: %s's occupant key was taken over", who)
	}
	return nil
}

// occupyMain is the command etcdctl lock runs while it holds the lock; it
// learns the lock key from etcdctl (ETCD_LOCK_KEY) and talks to the proxy.
func occupyMain(addr string) int {
	kv, err := clientv3.New(clientv3.Config{Endpoints: []string{addr}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer kv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := occupy(ctx, kv, os.Getenv("ETCD_LOCK_KEY"), os.Getenv(occupyName), os.Getenv(occupyWho)); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	return 0
}

func TestEtcdctl_locksElectsAndReportsThroughTheProxy(t *testing.T) {
	ctl, err := etcdctlBinary()
	if err != nil {
		t.Fatal(err)
	}
	c := startCluster(t, 1)
	p := startProxies(t, c, 1)[0]
	kv, err := clientv3.New(clientv3.Config{Endpoints: []string{p.addr}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer kv.Close()
	conn, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	etcdctl := func(args ...string) *exec.Cmd {
		return exec.CommandContext(ctx, ctl, append([]string{"--endpoints=" + p.addr, "--dial-timeout=5s", "--command-timeout=20s"}, args...)...)
	}

	t.Run("endpoint status", func(t *testing.T) {
		out, err := etcdctl("endpoint", "status", "-w", "json").CombinedOutput()
		if err != nil {
			t.Fatalf("etcdctl endpoint status: %v\n%s", err, out)
		}
		var st []struct {
			Endpoint string
			Status   struct {
				Version string `json:"version"`
				Leader  uint64 `json:"leader"`
			}
		}
		if err := json.Unmarshal(out, &st); err != nil || len(st) != 1 || st[0].Status.Version != "3.7.3" || st[0].Status.Leader == 0 {
			t.Fatalf("etcdctl endpoint status -w json: %v\n%s", err, out)
		}
	})

	t.Run("member list and endpoint status --cluster stay on the proxy", func(t *testing.T) {
		out, err := etcdctl("member", "list", "-w", "json").CombinedOutput()
		if err != nil {
			t.Fatalf("etcdctl member list: %v\n%s", err, out)
		}
		var ml struct {
			Members []struct {
				ClientURLs []string `json:"clientURLs"`
			} `json:"members"`
		}
		if err := json.Unmarshal(out, &ml); err != nil || len(ml.Members) != 1 || len(ml.Members[0].ClientURLs) != 1 || ml.Members[0].ClientURLs[0] != "http://"+p.addr {
			t.Fatalf("etcdctl member list -w json: %v\n%s; want the proxy's URL alone", err, out)
		}
		out, err = etcdctl("endpoint", "status", "--cluster", "-w", "json").CombinedOutput()
		if err != nil {
			t.Fatalf("etcdctl endpoint status --cluster: %v\n%s", err, out)
		}
		var st []struct{ Endpoint string }
		if err := json.Unmarshal(out, &st); err != nil || len(st) != 1 || st[0].Endpoint != "http://"+p.addr {
			t.Fatalf("etcdctl endpoint status --cluster -w json: %v\n%s", err, out)
		}
	})

	t.Run("lock interleaved with the proxy's Lock callers", func(t *testing.T) {
		const name, rounds, each = "mixed", 5, 3
		var wg sync.WaitGroup
		errs := make(chan error, 2*each*rounds)
		for i := range each {
			wg.Go(func() { // etcdctl lock NAME -- <this test binary as occupyMain>
				for r := range rounds {
					cmd := etcdctl("lock", name, "--", os.Args[0])
					cmd.Env = append(os.Environ(), occupyEnv+"="+p.addr, occupyName+"="+name, fmt.Sprintf("%s=etcdctl-%d-%d", occupyWho, i, r))
					if out, err := cmd.CombinedOutput(); err != nil {
						errs <- fmt.Errorf("etcdctl lock, round %d: %w\n%s", r, err, out)
					}
				}
			})
			wg.Go(func() { // the proxy's Lock service
				locks := v3lockpb.NewLockClient(conn)
				lease, err := kv.Grant(ctx, 30)
				if err != nil {
					errs <- err
					return
				}
				for r := range rounds {
					held, err := locks.Lock(ctx, &v3lockpb.LockRequest{Name: []byte(name), Lease: int64(lease.ID)})
					if err == nil {
						err = occupy(ctx, kv, string(held.Key), name, fmt.Sprintf("proxy-%d-%d", i, r))
						if _, uerr := locks.Unlock(ctx, &v3lockpb.UnlockRequest{Key: held.Key}); err == nil {
							err = uerr
						}
					}
					if err != nil {
						errs <- fmt.Errorf("proxy Lock, round %d: %w", r, err)
					}
				}
				kv.Revoke(ctx, lease.ID)
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		resp, err := kv.Get(ctx, "sections/"+name+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		if resp.Count != 2*each*rounds {
			t.Errorf("%d critical sections recorded, want %d", resp.Count, 2*each*rounds)
		}
		if left, err := kv.Get(ctx, name+"/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || left.Count != 0 {
			t.Errorf("lock keys left: %v %v", left, err)
		}
	})

	t.Run("elect interleaved with the proxy's Campaign and Observe", func(t *testing.T) {
		const name = "mixed-election"
		var campOut, obsOut proxytest.LockedBuffer
		camp := etcdctl("elect", name, "etcdctl-candidate")
		camp.Stdout, camp.Stderr = &campOut, &campOut
		if err := camp.Start(); err != nil {
			t.Fatal(err)
		}
		waitOutput(t, &campOut, "etcdctl-candidate")

		elec := v3electionpb.NewElectionClient(conn)
		lease, err := kv.Grant(ctx, 30)
		if err != nil {
			t.Fatal(err)
		}
		elected := make(chan error, 1)
		go func() {
			_, err := elec.Campaign(ctx, &v3electionpb.CampaignRequest{Name: []byte(name), Lease: int64(lease.ID), Value: []byte("proxy-candidate")})
			elected <- err
		}()
		obs := etcdctl("elect", "--listen", name)
		obs.Stdout, obs.Stderr = &obsOut, &obsOut
		if err := obs.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { obs.Process.Kill(); obs.Wait() }()
		waitOutput(t, &obsOut, "etcdctl-candidate")
		waitFor(t, 30*time.Second, "two candidates' keys", func() bool {
			resp, err := kv.Get(ctx, name+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
			return err == nil && resp.Count == 2
		})
		select {
		case err := <-elected:
			t.Fatalf("the proxy's Campaign returned (%v) while etcdctl leads", err)
		default:
		}
		lr, err := elec.Leader(ctx, &v3electionpb.LeaderRequest{Name: []byte(name)})
		if err != nil || string(lr.Kv.Value) != "etcdctl-candidate" {
			t.Fatalf("Leader through the proxy: %v %v", lr, err)
		}

		camp.Process.Signal(syscall.SIGINT) // etcdctl resigns
		if err := camp.Wait(); err != nil {
			t.Fatalf("etcdctl elect after SIGINT: %v\n%s", err, campOut.String())
		}
		select {
		case err := <-elected:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("the proxy's Campaign was not elected after etcdctl resigned")
		}
		waitOutput(t, &obsOut, "proxy-candidate")
		kv.Revoke(ctx, lease.ID)
	})
}

// waitOutput waits for want in b, and shows b as it is then if it never comes.
func waitOutput(t *testing.T, b *proxytest.LockedBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(b.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in output:\n%s", want, b.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
