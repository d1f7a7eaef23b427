// Command holder is the e2e tests' holder process, small so that dozens of
// them start at once on a small machine:
//
//	holder KIND NAME ADDRS TTL STAMPS EVERY WINDOW
//
// takes KIND (lock, semaphore, rwlock, campaign) on NAME through a session
// of TTL seconds and a window of WINDOW (a duration; 0s: the client's
// default) on the coordproxy replicas ADDRS (comma-separated), prints
// "HELD <fencing token> <lease hex>", and then, every EVERY (a duration),
// notes the time (the boot-time clock, in ns) in the file STAMPS if its
// session is still within its window: its critical section, checked
// without fencing. When the session says its window has passed it prints
// "LOST <time> <why>" (the time on the same clock) and writes no more. It
// holds until killed.
//
//	holder -ticker STAMPS
//
// is a command that cannot check anything: it starts a child that does the
// same (into STAMPS.child), then notes the time in STAMPS every 20 ms until
// it is killed.
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/coordproxy/coordproxy/client"
	"github.com/coordproxy/coordproxy/e2e/hold"
	"github.com/coordproxy/coordproxy/internal/clock"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == "-ticker" {
		os.Exit(ticker(os.Args[2], true))
	}
	if len(os.Args) == 3 && os.Args[1] == "-ticker-child" {
		os.Exit(ticker(os.Args[2], false))
	}
	if len(os.Args) != 8 {
		fmt.Fprintln(os.Stderr, "usage: holder KIND NAME ADDRS TTL STAMPS EVERY WINDOW | holder -ticker STAMPS")
		os.Exit(2)
	}
	os.Exit(holder(os.Args[1], os.Args[2], strings.Split(os.Args[3], ","), os.Args[4], os.Args[5], os.Args[6], os.Args[7]))
}

func holder(kind, name string, addrs []string, ttlArg, stamps, everyArg, windowArg string) int {
	ttl, err := strconv.ParseInt(ttlArg, 10, 64)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	every, err := time.ParseDuration(everyArg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	opts := []client.SessionOption{client.WithTTL(ttl)}
	if window, err := time.ParseDuration(windowArg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	} else if window > 0 {
		opts = append(opts, client.WithWindow(window))
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: addrs, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	s, err := client.NewSession(cli, opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "session:", err)
		return 1
	}
	token, err := hold.Take(context.Background(), s, kind, name, "holder")
	if err != nil {
		fmt.Fprintln(os.Stderr, kind+":", err)
		return 1
	}
	fmt.Printf("HELD %d %x\n", token, int64(s.Lease()))
	f, err := os.OpenFile(stamps, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Println("ERROR", err)
		select {}
	}
	for {
		// The time first, then the check: a stamp is a moment at which
		// the session was within its window. (A pause between the check
		// and a real write is the gap only fencing closes; not what this
		// measures.)
		now := clock.Now()
		if s.Remaining() <= 0 {
			fmt.Println("LOST", int64(now), s.Err())
			select {}
		}
		fmt.Fprintf(f, "%d\n", int64(now))
		time.Sleep(every)
	}
}

// ticker writes stamps until it is killed; it returns only on failure.
//
//nolint:unparam // the exit code of a failure, for main
func ticker(stamps string, parent bool) int {
	if parent {
		if err := exec.Command(os.Args[0], "-ticker-child", stamps+".child").Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	f, err := os.OpenFile(stamps, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for {
		fmt.Fprintf(f, "%d\n", int64(clock.Now()))
		time.Sleep(20 * time.Millisecond)
	}
}
