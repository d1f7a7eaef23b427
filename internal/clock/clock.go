// Package clock is the clock a session's safe-until is kept in, and that the
// `coordproxy lock` command and the process supervising its command share:
// the time since boot, counted on Linux by CLOCK_BOOTTIME. Go's own
// monotonic clock (CLOCK_MONOTONIC) stops while the machine is suspended,
// so a holder resumed after a suspend would read that hardly any time had
// passed and believe it still holds while the proxy, on another machine,
// has long since let its lease go; the boot-time clock counts the suspend.
//
// Timers still run on Go's clock: one set before a suspend fires late after
// it. Whoever relies on a deadline reads Now again (see client.Session's
// Remaining) instead of trusting that its timer would have fired.
package clock

import "time"

// Now is the time since boot (on Linux; elsewhere since an arbitrary
// moment of this process, on Go's monotonic clock).
func Now() time.Duration { return now() }
