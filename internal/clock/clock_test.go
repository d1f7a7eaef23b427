package clock

import (
	"testing"
	"time"
)

// While nothing is suspended the clock runs at Go's clock's rate: an
// interval read on it around one read on Go's clock is no shorter, and one
// read inside one on Go's clock no longer.
func TestNow_runsAtTheRateOfGosClock(t *testing.T) {
	outer0 := Now()
	inner0 := time.Now()
	time.Sleep(20 * time.Millisecond)
	inner1 := time.Now()
	outer1 := Now()
	if d, m := outer1-outer0, inner1.Sub(inner0); d < m {
		t.Fatalf("boot-time interval %v around a monotonic one of %v", d, m)
	}
	outerM0 := time.Now()
	inB0 := Now()
	time.Sleep(20 * time.Millisecond)
	inB1 := Now()
	outerM1 := time.Now()
	if d, m := inB1-inB0, outerM1.Sub(outerM0); d > m || d <= 0 {
		t.Fatalf("boot-time interval %v inside a monotonic one of %v", d, m)
	}
}
