package main

import (
	"log/slog"
	"math"
	"os"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

// memLimitRatio is the share of the container's memory limit given to the
// Go runtime as its soft limit; the rest is for what the runtime does not
// count (the binary, thread stacks) and for reaching the limit late.
const memLimitRatio = 0.9

// setMemoryLimit gives the Go runtime a soft memory limit (GOMEMLIMIT) of
// 90% of the container's memory limit (cgroup memory.max), unless
// GOMEMLIMIT is set. Without one, the collector lets the heap grow to
// twice what is live plus the goroutine stacks before it collects, and
// keeps freed memory for a while: a replica that holds thousands of waiting
// calls (a parked goroutine with its stack each) then runs far above what
// is live (docs/benchmarks.md) and can be killed for memory it no longer
// uses. With the limit the collector works harder as the limit nears; it
// never fails an allocation. Without a container limit nothing changes.
// AUTOMEMLIMIT (automemlimit's) sets another ratio or "off". limits is
// memlimit.FromCgroup but in tests.
func setMemoryLimit(log *slog.Logger, limits memlimit.Provider) {
	if _, ok := os.LookupEnv("GOMEMLIMIT"); ok {
		return
	}
	limit, err := memlimit.Set(memlimit.WithRatio(memLimitRatio), memlimit.WithProvider(limits))
	switch {
	case err != nil:
		log.Debug("no container memory limit found; GOMEMLIMIT not set", "error", err)
	case limit > 0 && limit < math.MaxInt64:
		log.Info("GOMEMLIMIT set from the container's memory limit", "gomemlimit", limit)
	}
}
