package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/coordproxy/coordproxy/answer"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

const describeUsage = `Usage: coordproxy describe [flags] NAME

Prints, through coordproxy, who holds the lock NAME (key, lease, fencing
token, the lease's TTL left) and who waits, in the order they will get it.
With --election: the leader (with its value) and the candidates; with
--semaphore: the holders and the waiters. --json prints the API's answer
(coordproxy.v1 LockDescription, ElectionDescription or SemaphoreDescription)
as JSON instead.

Exit codes: 0; 1 when coordproxy cannot answer; 2 on bad usage.

Flags:`

// describeCmd is `coordproxy describe`: see describeUsage.
func describeCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("coordproxy describe", flag.ContinueOnError)
	var cf cliFlags
	cf.register(fs)
	election := fs.Bool("election", false, "describe the election NAME")
	semaphore := fs.Bool("semaphore", false, "describe the semaphore NAME")
	limit := fs.Int64("limit", 0, fmt.Sprintf("list at most this many waiters (0: up to %d); all are counted", answer.DescribeLimit))
	asJSON := fs.Bool("json", false, "print the answer as JSON")
	if code, done := parseCLI(fs, describeUsage, args, stdout, stderr); done {
		return code
	}
	if fs.NArg() != 1 || fs.Arg(0) == "" {
		return cliUsageError(stderr, fs.Name(), "want one non-empty NAME")
	}
	if *election && *semaphore {
		return cliUsageError(stderr, fs.Name(), "--election and --semaphore exclude each other")
	}
	if err := cf.check(); err != nil {
		return cliUsageError(stderr, fs.Name(), err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*cf.dialTimeout)
	defer cancel()
	cli, err := cf.dial(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "coordproxy describe: %s\n", oneLine(err))
		return 1
	}
	defer cli.Close()
	conn := cli.ActiveConnection()
	req := &coordproxyv1.DescribeRequest{Name: []byte(fs.Arg(0)), Limit: *limit}

	var answer proto.Message
	var text string
	switch {
	case *election:
		d, err := coordproxyv1.NewElectionServiceClient(conn).Describe(ctx, req)
		if err != nil {
			return describeFailed(stderr, err)
		}
		answer, text = d, formatQueue("election", fs.Arg(0), d.Header, "leader", nilIfEmpty(d.Leader), "candidates", d.Candidates, d.Waiting)
	case *semaphore:
		d, err := coordproxyv1.NewSemaphoreServiceClient(conn).Describe(ctx, req)
		if err != nil {
			return describeFailed(stderr, err)
		}
		answer = d
		text = fmt.Sprintf("semaphore %s (limit %d) at revision %d\n", fs.Arg(0), d.Limit, d.Header.GetRevision())
		text += formatKeys("holders", d.Holders, int64(len(d.Holders)))
		text += formatKeys("waiting", d.Waiters, d.Waiting)
	default:
		d, err := coordproxyv1.NewLockServiceClient(conn).Describe(ctx, req)
		if err != nil {
			return describeFailed(stderr, err)
		}
		answer, text = d, formatQueue("lock", fs.Arg(0), d.Header, "holder", nilIfEmpty(d.Holder), "waiting", d.Waiters, d.Waiting)
	}
	if *asJSON {
		b, err := protojson.MarshalOptions{Multiline: true, UseProtoNames: true}.Marshal(answer)
		if err != nil {
			return describeFailed(stderr, err)
		}
		fmt.Fprintln(stdout, string(b))
		return 0
	}
	fmt.Fprint(stdout, text)
	return 0
}

func describeFailed(stderr io.Writer, err error) int {
	fmt.Fprintf(stderr, "coordproxy describe: %s\n", oneLine(err))
	return 1
}

func nilIfEmpty(k *coordproxyv1.Key) []*coordproxyv1.Key {
	if k == nil {
		return nil
	}
	return []*coordproxyv1.Key{k}
}

// formatQueue prints a lock's or an election's queue for humans.
func formatQueue(kind, name string, hdr *coordproxyv1.ResponseHeader, first string, held []*coordproxyv1.Key, rest string, waiters []*coordproxyv1.Key, waiting int64) string {
	s := fmt.Sprintf("%s %s at revision %d\n", kind, name, hdr.GetRevision())
	if len(held) == 0 {
		s += fmt.Sprintf("%s: none\n", first)
	} else {
		s += fmt.Sprintf("%s: %s\n", first, formatKey(held[0], true))
	}
	return s + formatKeys(rest, waiters, waiting)
}

func formatKeys(title string, keys []*coordproxyv1.Key, total int64) string {
	s := fmt.Sprintf("%s: %d\n", title, total)
	for i, k := range keys {
		s += fmt.Sprintf("  %d. %s\n", i+1, formatKey(k, k.GrantedTtl > 0))
	}
	if more := total - int64(len(keys)); more > 0 {
		s += fmt.Sprintf("  … and %d more\n", more)
	}
	return s
}

func formatKey(k *coordproxyv1.Key, holds bool) string {
	parts := []string{string(k.Key), fmt.Sprintf("lease %x", k.Lease)}
	if holds {
		parts = append(parts, fmt.Sprintf("fencing token %d", k.CreateRevision))
		if k.Ttl < 0 {
			parts = append(parts, "lease expired")
		} else {
			parts = append(parts, fmt.Sprintf("TTL %ds of %ds", k.Ttl, k.GrantedTtl))
		}
	} else {
		parts = append(parts, fmt.Sprintf("since revision %d", k.CreateRevision))
	}
	if len(k.Value) > 0 {
		parts = append(parts, fmt.Sprintf("value %q", k.Value))
	}
	return strings.Join(parts, "  ")
}
