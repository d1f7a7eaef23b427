package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/coordproxy/coordproxy/client"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"golang.org/x/sys/unix"
)

// sessionTTL is the sessions scenario's lease TTL: the CLI's default.
const sessionTTL = 10

// sessionsScenario: b.sessions sessions open at once, 64 opening at a time
// over 64 connections, then held for the scenario's duration: through the
// proxy, coordproxy sessions that heartbeat (-session-window, by default the
// client's 750 ms: a heartbeat every 187.5 ms each); natively, concurrency.Session (etcd's client keeps the
// leases alive itself). Ops is sessions opened per second, the latencies
// those of opening one; the notes give what holding them costs while
// nothing else happens: each process's CPU (in cores) and RSS growth, and
// etcd's requests per second.
//
// With -pin the sessions' clients, in this process, move to etcd's CPU for
// the scenario: 10 000 sessions heartbeating cost their clients about what
// they cost the proxy, and on the proxy's CPU they would starve it (in a
// deployment they are spread over the app hosts); etcd has little to do
// here besides keep-alives.
func sessionsScenario(ctx context.Context, b *bench, t target, scenario string) (result, error) {
	if b.etcdCPUs != nil {
		if err := pinSelf(append(slices.Clone(b.etcdCPUs), b.restCPUs...)); err != nil {
			return result{}, err
		}
		defer pinSelf(b.restCPUs)
	}
	clis, closeAll, err := t.clients(64)
	if err != nil {
		return result{}, err
	}
	defer closeAll()
	before := b.footprintNow(ctx)

	closers := make([]func(), b.sessions)
	dones := make([]<-chan struct{}, b.sessions)
	errs := make([]func() error, b.sessions)
	res := b.inParallel(ctx, scenario, t, b.sessions, func(w, i int) error {
		closer, done, errOf, err := openSession(clis[w%len(clis)], t.name == "coordproxy", b.sessionWindow, sessionTTL)
		if err == nil {
			closers[i], dones[i], errs[i] = closer, done, errOf
		}
		return err
	})

	// Held: a second for the opening's work to settle, then the window.
	select {
	case <-ctx.Done():
	case <-time.After(time.Second):
	}
	held, kaBefore := b.costNow(ctx, b.proxy), b.etcdKeepAlives(ctx)
	selfBefore, selfErr := selfCPU()
	start := time.Now()
	select {
	case <-ctx.Done():
	case <-time.After(b.duration):
	}
	after, kaAfter := b.costNow(ctx, b.proxy), b.etcdKeepAlives(ctx)
	secs := time.Since(start).Seconds()
	if selfAfter, err := selfCPU(); err == nil && selfErr == nil {
		// The clients' side, in this process: what heartbeating costs
		// the machines the sessions come from, all of them here.
		res.Extra["held_clients_cpu_cores"] = round2((selfAfter - selfBefore) / secs)
	}
	lost := 0
	for i, d := range dones {
		if d == nil {
			continue
		}
		select {
		case <-d:
			if lost == 0 {
				res.Extra["first_ended_why"] = fmt.Sprint(errs[i]())
			}
			lost++
		default:
		}
	}
	res.Extra["sessions_ended_while_held"] = lost
	if kaBefore >= 0 && kaAfter >= 0 {
		res.Extra["held_etcd_keepalives_per_s"] = round1((kaAfter - kaBefore) / secs)
	}
	if held.etcdCPU >= 0 && after.etcdCPU >= 0 {
		res.Extra["held_etcd_cpu_cores"] = round2((after.etcdCPU - held.etcdCPU) / secs)
	}
	if held.requests >= 0 && after.requests >= 0 {
		res.Extra["held_etcd_requests_per_s"] = round1((after.requests - held.requests) / secs)
	}
	if t.name == "coordproxy" && held.proxyCPU >= 0 && after.proxyCPU >= 0 {
		cores := (after.proxyCPU - held.proxyCPU) / secs
		res.Extra["held_proxy_cpu_cores"] = round2(cores)
		// Heartbeats answered per second: every live session's, each a
		// window/4.
		beats := float64(res.Count-lost) / (b.sessionWindow / 4).Seconds()
		res.Extra["held_proxy_heartbeats_per_s"] = round1(beats)
		res.Extra["held_proxy_cpu_us_per_heartbeat"] = round1(cores * 1e6 / beats)
	}
	before.grown(b.footprintNow(ctx), t, res.Extra)

	var closing sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, c := range closers {
		if c == nil {
			continue
		}
		closing.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			c()
		})
	}
	closing.Wait()
	return res, nil
}

// etcdKeepAlives is how many lease keep-alives etcd has received (stream
// messages, which its unary request count leaves out); -1 unknown.
func (b *bench) etcdKeepAlives(ctx context.Context) float64 {
	fams, err := readMetrics(ctx, b.etcdURL)
	if err != nil {
		return -1
	}
	return sumMetric(fams, "grpc_server_msg_received_total", map[string]string{"grpc_method": "LeaseKeepAlive"})
}

// openSession opens one session on cli and returns what closes it, what
// is closed when it ends and why it ended: a coordproxy session (TTL
// sessionTTL, heartbeats within window), or etcd's concurrency.Session
// with TTL nativeTTL.
func openSession(cli *clientv3.Client, proxied bool, window time.Duration, nativeTTL int) (func(), <-chan struct{}, func() error, error) {
	if proxied {
		s, err := client.NewSession(cli, client.WithTTL(sessionTTL), client.WithWindow(window))
		if err != nil {
			return nil, nil, nil, err
		}
		return func() { s.Close() }, s.Done(), s.Err, nil
	}
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(nativeTTL))
	if err != nil {
		return nil, nil, nil, err
	}
	return func() { s.Close() }, s.Done(), func() error { return errors.New("concurrency.Session's keep-alive ended") }, nil
}

// selfCPU is this process's user and system time so far, in seconds.
func selfCPU() (float64, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds(), nil
}
