package proxytest

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Fence counts the holders of a lock or semaphore twice: in the test
// process, and in an etcd counter that only a holder whose key still exists
// with its create revision (its fencing token) may change, with a compare
// on that revision and on the counter's mod revision. Either count above
// Limit is an overlap, and a holder whose key is gone while it holds is a
// lost grant; Check fails on both. (A read/write lock has a fence of its own
// in rwlock's tests: readers may overlap, a counter that moved under a
// reader may not.)
type Fence struct {
	KV      *clientv3.Client
	Counter string
	Limit   int64 // how many may hold at once: 1 for a lock

	inside                     atomic.Int64
	over, lost, enter, written atomic.Int64
}

// NewFence is a Fence on counter for limit holders.
func NewFence(kv *clientv3.Client, counter string, limit int64) *Fence {
	return &Fence{KV: kv, Counter: counter, Limit: limit}
}

// Enter is a holder of key, created at revision token, coming in.
func (f *Fence) Enter(ctx context.Context, key string, token int64) error {
	if f.inside.Add(1) > f.Limit {
		f.over.Add(1)
	}
	f.enter.Add(1)
	return f.add(ctx, key, token, 1)
}

// Leave is that holder going out again.
func (f *Fence) Leave(ctx context.Context, key string, token int64) error {
	err := f.add(ctx, key, token, -1)
	f.inside.Add(-1)
	return err
}

// Critical is one critical section of the holder of lock key: its create
// revision read from etcd, then Enter and Leave.
func (f *Fence) Critical(ctx context.Context, key string) error {
	resp, err := f.KV.Get(ctx, key)
	if err != nil {
		return err
	}
	if len(resp.Kvs) == 0 {
		f.lost.Add(1) // granted, but gone already
		return nil
	}
	token := resp.Kvs[0].CreateRevision
	if err := f.Enter(ctx, key, token); err != nil {
		return err
	}
	return f.Leave(ctx, key, token)
}

// MutexRound locks m (a client-side concurrency.Mutex), runs a critical
// section and unlocks.
func (f *Fence) MutexRound(ctx context.Context, m *concurrency.Mutex) error {
	if err := m.Lock(ctx); err != nil {
		return err
	}
	if err := f.Critical(ctx, m.Key()); err != nil {
		return err
	}
	return m.Unlock(ctx)
}

// add changes the etcd counter by d, fenced by key's create revision.
func (f *Fence) add(ctx context.Context, key string, token int64, d int64) error {
	for {
		cr, err := f.KV.Get(ctx, f.Counter)
		if err != nil {
			return err
		}
		n, mod := int64(0), int64(0)
		if len(cr.Kvs) > 0 {
			n, _ = strconv.ParseInt(string(cr.Kvs[0].Value), 10, 64)
			mod = cr.Kvs[0].ModRevision
		}
		if n+d > f.Limit || n+d < 0 {
			f.over.Add(1)
		}
		resp, err := f.KV.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", token),
				clientv3.Compare(clientv3.ModRevision(f.Counter), "=", mod)).
			Then(clientv3.OpPut(f.Counter, strconv.FormatInt(n+d, 10))).
			Else(clientv3.OpGet(key)).
			Commit()
		if err != nil {
			return err
		}
		if resp.Succeeded {
			f.written.Add(1)
			return nil
		}
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 0 || kvs[0].CreateRevision != token {
			f.lost.Add(1) // no longer a holder while inside
			return nil
		}
		// Another holder changed the counter first: read it again.
	}
}

// Check fails the test on any overlap or lost grant, and unless there were
// exactly grants critical sections, each with both its fenced writes, and
// nobody is inside any more with the etcd counter back at 0.
func (f *Fence) Check(t testing.TB, grants int64) {
	t.Helper()
	if f.over.Load() != 0 || f.lost.Load() != 0 {
		t.Fatalf("more than %d holders %d times; fenced writes by a holder whose key was gone: %d", f.Limit, f.over.Load(), f.lost.Load())
	}
	if f.enter.Load() != grants || f.inside.Load() != 0 || f.written.Load() != 2*grants {
		t.Fatalf("%d grants with %d fenced writes, want %d and %d; %d still inside", f.enter.Load(), f.written.Load(), grants, 2*grants, f.inside.Load())
	}
	resp, err := f.KV.Get(context.Background(), f.Counter)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 || string(resp.Kvs[0].Value) != "0" {
		t.Fatalf("etcd counter %v after every holder left, want 0", resp.Kvs)
	}
}
