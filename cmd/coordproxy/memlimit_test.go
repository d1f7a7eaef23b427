package main

import (
	"log/slog"
	"math"
	"runtime/debug"
	"testing"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

func TestSetMemoryLimit(t *testing.T) {
	const container = 256 << 20
	for _, tc := range []struct {
		name       string
		gomemlimit string // "" leaves GOMEMLIMIT unset
		limits     memlimit.Provider
		want       int64
	}{
		{"container limit: 90% of it", "", memlimit.Limit(container), container * 9 / 10},
		{"no container limit: none", "", func() (uint64, error) { return 0, memlimit.ErrNoLimit }, math.MaxInt64},
		{"GOMEMLIMIT set: left alone", "100MiB", memlimit.Limit(container), math.MaxInt64},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prev := debug.SetMemoryLimit(math.MaxInt64)
			t.Cleanup(func() { debug.SetMemoryLimit(prev) })
			if tc.gomemlimit != "" {
				t.Setenv("GOMEMLIMIT", tc.gomemlimit)
			}
			t.Setenv("AUTOMEMLIMIT", "0.9")
			setMemoryLimit(slog.New(slog.DiscardHandler), tc.limits)
			if got := debug.SetMemoryLimit(-1); got != tc.want {
				t.Errorf("memory limit %d, want %d", got, tc.want)
			}
		})
	}
}
