package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// profileEtcd takes etcd's own CPU profile (etcd's /debug/pprof, served
// with -etcd-profile) while a scenario runs on a target, into
// dir/<scenario>-<target>.pprof: where etcd's CPU goes for each, to
// compare. It covers the scenario's timed part (-duration, whole seconds,
// at least 1); the returned func waits for it. Nothing without dir.
func (b *bench) profileEtcd(ctx context.Context, dir, scenario, target string) (wait func()) {
	if dir == "" || b.etcd == nil {
		return func() {}
	}
	secs := max(1, int(b.duration/time.Second))
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := b.fetchProfile(ctx, filepath.Join(dir, scenario+"-"+target+".pprof"), secs); err != nil {
			fmt.Fprintf(os.Stderr, "coordbench: etcd profile of %s on %s: %v\n", scenario, target, err)
		}
	}()
	return func() { <-done }
}

func (b *bench) fetchProfile(ctx context.Context, file string, secs int) error {
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return err
	}
	return saveURL(ctx, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", b.etcdURL, secs), file)
}
