package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// defaultProbeTimeout is longer than proxy.ReadyTimeout, the bound of the
// etcd read behind /readyz, so that a slow etcd shows as a 503 with its
// reason rather than as a probe timeout.
const defaultProbeTimeout = 3 * time.Second

const probeUsage = `Usage: coordproxy probe [--timeout 3s] URL

GETs URL and exits 0 on a 2xx answer, 1 on any other answer or none (with one
line on stderr saying why), 2 on bad usage. It is the health check command for
images without a shell or curl, for example
  coordproxy probe http://127.0.0.1:23790/readyz`

// probe is `coordproxy probe`: see probeUsage. It returns the exit code.
func probe(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("coordproxy probe", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	timeout := fs.Duration("timeout", defaultProbeTimeout, "bound for the whole request, answer included")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stdout, probeUsage)
			return 0
		}
		return probeUsageError(stderr, err.Error())
	}
	if fs.NArg() != 1 {
		return probeUsageError(stderr, fmt.Sprintf("want one URL, got %d arguments", fs.NArg()))
	}
	if *timeout <= 0 {
		return probeUsageError(stderr, fmt.Sprintf("invalid --timeout %s: must be positive", *timeout))
	}
	target := fs.Arg(0)
	u, err := url.Parse(target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return probeUsageError(stderr, fmt.Sprintf("invalid URL %q: want http://host:port/path", target))
	}

	if err := get(u.String(), *timeout); err != nil {
		fmt.Fprintf(stderr, "coordproxy probe: GET %s: %s\n", target, oneLine(err))
		return 1
	}
	return 0
}

func probeUsageError(stderr io.Writer, msg string) int {
	fmt.Fprintf(stderr, "coordproxy probe: %s (usage: coordproxy probe [--timeout 3s] URL)\n", msg)
	return 2
}

// maxReasonBytes bounds how much of a failed answer's body is reported:
// /readyz explains itself in a short JSON body.
const maxReasonBytes = 512

// get returns nil if target answers 2xx within timeout; otherwise the error or
// the status with the start of the body.
func get(target string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return err
	}
	// A health check goes straight to its target: an HTTP_PROXY set for the
	// application must not stand between the kubelet or Docker and the
	// process it checks.
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("no answer within %s", timeout)
		}
		// The caller names the request already; keep only the cause.
		var ue *url.Error
		if errors.As(err, &ue) {
			return ue.Err
		}
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode <= 299 {
		return nil
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxReasonBytes))
	if len(body) == 0 {
		return errors.New(resp.Status)
	}
	return fmt.Errorf("%s: %s", resp.Status, body)
}
