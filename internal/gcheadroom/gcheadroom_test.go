package gcheadroom

import (
	"os"
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestGCPercentFor(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		base, headroom uint64
		want           int
	}{
		{8 * mib, 64 * mib, 800},
		{64 * mib, 64 * mib, 100},
		{200 * mib, 64 * mib, 100}, // more live than headroom: Go's default
		{1, 64 * mib, gcPercentMax},
		{0, 64 * mib, gcPercentMax},
	} {
		if got := gcPercentFor(tc.base, tc.headroom); got != tc.want {
			t.Errorf("gcPercentFor(%d, %d) = %d, want %d", tc.base, tc.headroom, got, tc.want)
		}
	}
}

// TestGCHeadroom runs the tuner on this process: a small heap gets a GOGC
// that leaves the headroom, a heap larger than the headroom gets 100 back,
// and stopping restores what GOGC was.
func TestGCHeadroom(t *testing.T) {
	t.Setenv("GOGC", "") // restored after the test
	os.Unsetenv("GOGC")
	const headroom = 256 << 20
	tuned := make(chan int, 100)
	prev := debug.SetGCPercent(100)
	defer debug.SetGCPercent(prev)
	stop := Start(headroom, func(p int) {
		select {
		case tuned <- p:
		default:
		}
	})
	next := func() int {
		t.Helper()
		for len(tuned) > 0 {
			<-tuned
		}
		runtime.GC()
		select {
		case p := <-tuned:
			return p
		case <-time.After(10 * time.Second):
			t.Fatal("no GOGC decided 10 s after a collection")
			return 0
		}
	}
	next() // the cycle that was under way at the start
	if p := next(); p <= 100 {
		t.Errorf("GOGC %d with a heap far below the headroom, want more than 100", p)
	}
	if got := debug.SetGCPercent(-1); got <= 100 {
		t.Errorf("the runtime's GOGC is %d, want the tuner's", got)
	} else {
		debug.SetGCPercent(got)
	}
	big := make([]byte, 2*headroom) // live, though never touched
	next()
	if p := next(); p != 100 {
		t.Errorf("GOGC %d with more live than the headroom, want 100", p)
	}
	runtime.KeepAlive(big)
	debug.SetGCPercent(42)
	stop2 := Start(0, nil)
	stop2()
	stop()
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("GOGC %d after stop, want the 100 it was at start", got)
	}
}

func TestGCHeadroomLeavesGOGC(t *testing.T) {
	t.Setenv("GOGC", "150")
	prev := debug.SetGCPercent(150)
	defer debug.SetGCPercent(prev)
	stop := Start(64<<20, func(int) { t.Error("tuned although GOGC is set") })
	defer stop()
	runtime.GC()
	runtime.GC()
	if got := debug.SetGCPercent(150); got != 150 {
		t.Errorf("GOGC %d, want the 150 it was set to", got)
	}
}
