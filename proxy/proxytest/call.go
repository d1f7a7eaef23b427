package proxytest

import (
	"testing"
	"time"
)

// Call is a call running in the background (Go).
type Call struct {
	done chan struct{}
	err  error
}

// Go runs f in the background.
func Go(f func() error) *Call {
	c := &Call{done: make(chan struct{})}
	go func() {
		defer close(c.done)
		c.err = f()
	}()
	return c
}

// Returned reports whether the call has returned.
func (c *Call) Returned() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// Wait waits up to 30 s for the call to return and gives its error.
func (c *Call) Wait(t testing.TB) error {
	t.Helper()
	select {
	case <-c.done:
		return c.err
	case <-time.After(30 * time.Second):
		t.Fatal("call did not return")
		return nil
	}
}

// EtcdWatchers is how many watchers the test process's etcds have.
func EtcdWatchers(t testing.TB) float64 {
	t.Helper()
	return EtcdMetric(t, "etcd_debugging_mvcc_watcher_total")
}

// Err is the call's error, once it has returned.
func (c *Call) Err() error { return c.err }

// Done is closed when the call returns.
func (c *Call) Done() <-chan struct{} { return c.done }
