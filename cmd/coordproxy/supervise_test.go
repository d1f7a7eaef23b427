//go:build unix

package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/internal/clock"
)

// A supervisor acts on the newest deadline the CLI sent, even when it
// starts after that deadline's predecessor passed (a slow start on a busy
// machine): it reads what waits in its pipe before it kills.
func TestSupervisor_actsOnTheNewestDeadline(t *testing.T) {
	out := filepath.Join(t.TempDir(), "done")
	g, err := startGuarded([]string{"sh", "-c", "sleep 0.3; echo ran > " + out}, os.Environ(), nil, io.Discard, os.Stderr,
		100*time.Millisecond, clock.Now()-time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer g.close()
	g.setDeadline(clock.Now() + time.Minute)
	r := <-g.result
	if r.deadline || r.died || r.code != 0 {
		t.Fatalf("the command ended %+v; want it run to its end", r)
	}
	if b, err := os.ReadFile(out); err != nil || strings.TrimSpace(string(b)) != "ran" {
		t.Fatalf("the command did not run: %q %v", b, err)
	}
}

// A deadline that is not moved stops the command: SIGTERM the kill grace
// before it (a command that stops on SIGTERM ends there), SIGKILL at it (one
// that does not).
func TestSupervisor_stopsTheCommandAtADeadlineNotMoved(t *testing.T) {
	for _, c := range []struct {
		name, script string
		want         guardResult
	}{
		{"stops on SIGTERM", "trap 'exit 3' TERM; while :; do sleep 0.01; done", guardResult{code: 3, deadline: true}},
		{"ignores SIGTERM", "trap '' TERM; while :; do sleep 0.01; done", guardResult{deadline: true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			start := clock.Now()
			deadline := start + 500*time.Millisecond
			g, err := startGuarded([]string{"sh", "-c", c.script}, os.Environ(), nil, io.Discard, io.Discard, 200*time.Millisecond, deadline)
			if err != nil {
				t.Fatal(err)
			}
			defer g.close()
			r := <-g.result
			if r != c.want {
				t.Fatalf("the command ended %+v, want %+v", r, c.want)
			}
			if ended := clock.Now(); ended < deadline-200*time.Millisecond {
				t.Fatalf("stopped %s before the SIGTERM was due", deadline-200*time.Millisecond-ended)
			}
		})
	}
}
