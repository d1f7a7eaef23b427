package etcdio

import (
	"bytes"
	"context"
	"runtime"
	"sync"
	"testing"
)

// goroutine is the running goroutine's id, from its stack's first line.
func goroutine() string {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	return string(bytes.Fields(buf)[1])
}

// Jobs one at a time all go to the one worker last used, whose stack has
// grown already, rather than to each worker in turn.
func TestWorkers_aLightLoadKeepsToTheLastWorker(t *testing.T) {
	w := newWorkers(8)
	defer w.close()
	// First all eight busy at once, so that each has run and is idle again.
	all := make(chan struct{})
	var busy sync.WaitGroup
	busy.Add(8)
	var done sync.WaitGroup
	for range 8 {
		done.Go(func() { w.do(context.Background(), func() { busy.Done(); <-all }) })
	}
	busy.Wait()
	close(all)
	done.Wait()

	ran := map[string]int{}
	caller := goroutine()
	for range 32 {
		w.do(context.Background(), func() { ran[goroutine()]++ })
	}
	if len(ran) != 1 || ran[caller] != 0 {
		t.Fatalf("32 jobs in a row ran on goroutines %v (the caller is %s), want all on one worker", ran, caller)
	}
}

// Jobs at once each get their own worker, and more than there are workers
// run on their callers once the queue context ends.
func TestWorkers_busyWorkersLeaveTheJobToItsCaller(t *testing.T) {
	w := newWorkers(2)
	defer w.close()
	release := make(chan struct{})
	started := make(chan string, 2)
	for range 2 {
		go w.do(context.Background(), func() { started <- goroutine(); <-release })
	}
	a, b := <-started, <-started
	if a == b {
		t.Fatalf("two jobs at once ran on one goroutine %s", a)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	caller, ran := goroutine(), ""
	w.do(ctx, func() { ran = goroutine() })
	close(release)
	if ran != caller {
		t.Fatalf("with every worker busy and the queue over, the job ran on %s, want its caller %s", ran, caller)
	}
}
