// Package gcheadroom sets Go's GOGC from the live heap, so that a process
// whose live heap is small is not collected many times a second.
package gcheadroom

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
)

// Default is the headroom of coordproxy's --gc-headroom-bytes.
const Default = 64 << 20

// A replica's live heap is small (sessions, names, calls in flight: a few
// MiB) while it allocates a few hundred objects per call, so with Go's
// default (GOGC=100: collect once the heap has grown by what is live) it
// collects many times a second under load: 10–20 % of the proxy's CPU at 64
// clients (docs/benchmarks.md). gcHeadroom lets the heap grow by at least
// headroom bytes before the next collection: after each collection it sets
// GOGC so that the heap goal is what is live plus headroom, or GOGC=100's
// goal when that is more (a live heap larger than headroom, such as 10 000
// parked waiters', collects exactly as before). A container's memory limit
// (GOMEMLIMIT) still makes the collector work harder as it nears.
// Nothing is changed when GOGC is set.

// gcPercentMax bounds the GOGC gcHeadroom sets (a nearly empty heap).
const gcPercentMax = 10000

var gcBaseMetrics = []string{"/gc/heap/live:bytes", "/gc/scan/stack:bytes", "/gc/scan/globals:bytes"}

type gcHeadroom struct {
	headroom uint64
	percent  int
	stopped  atomic.Bool
	tuned    func(percent int)
	samples  []metrics.Sample
}

// gcSentinel is dropped as soon as it is made: its cleanup runs after the
// next collection. (It holds a pointer so that it is never a tiny object,
// whose cleanup may not run.)
type gcSentinel struct{ _ *byte }

// Start starts tuning GOGC for headroom bytes (0: Go's default, nothing
// started); stop ends it and gives GOGC back what it was. tuned, if not
// nil, learns each GOGC decided.
func Start(headroom uint64, tuned func(percent int)) (stop func()) {
	if _, ok := os.LookupEnv("GOGC"); ok || headroom == 0 {
		return func() {}
	}
	g := &gcHeadroom{headroom: headroom, percent: 100, tuned: tuned, samples: make([]metrics.Sample, len(gcBaseMetrics))}
	for i, name := range gcBaseMetrics {
		g.samples[i].Name = name
	}
	prev := debug.SetGCPercent(100)
	g.arm()
	return func() {
		g.stopped.Store(true)
		debug.SetGCPercent(prev)
	}
}

func (g *gcHeadroom) arm() {
	runtime.AddCleanup(&gcSentinel{}, func(g *gcHeadroom) {
		if g.stopped.Load() {
			return
		}
		g.tune()
		g.arm()
	}, g)
}

// tune sets GOGC for the collection just done. The goal of the next one is
// live + (live + stacks + globals) × GOGC/100; changing GOGC stops the
// world for a moment, so small changes are left.
func (g *gcHeadroom) tune() {
	metrics.Read(g.samples)
	var base uint64
	for _, s := range g.samples {
		if s.Value.Kind() == metrics.KindUint64 {
			base += s.Value.Uint64()
		}
	}
	percent := gcPercentFor(base, g.headroom)
	if diff := percent - g.percent; diff*8 > g.percent || -diff*8 > g.percent {
		debug.SetGCPercent(percent)
		g.percent = percent
	}
	if g.tuned != nil {
		g.tuned(g.percent)
	}
}

// gcPercentFor is the GOGC that lets a heap whose collection base is base
// bytes grow by headroom: never less than 100, at most gcPercentMax.
func gcPercentFor(base, headroom uint64) int {
	if base == 0 {
		return gcPercentMax
	}
	p := headroom * 100 / base
	return int(min(max(p, 100), gcPercentMax))
}
