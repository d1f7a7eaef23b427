package rwlock_test

import (
	"testing"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
)

// An RWLock key is new for every acquisition, so a retried Unlock finds its
// own key gone; with a fencing token, an Unlock deletes only the
// acquisition the token names.
func TestUnlock_withAFencingTokenDeletesOnlyThatAcquisition(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	lease := env.Grant(t, 30)
	w, err := env.RWLocks.WLock(ctx, &coordproxyv1.RWLockRequest{Name: []byte("rw"), Lease: lease})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.RWLocks.Unlock(ctx, &coordproxyv1.UnlockRequest{Key: w.Key, FencingToken: w.FencingToken - 1}); err != nil {
		t.Fatalf("Unlock with another acquisition's token: %v, want success", err)
	}
	if keys := env.Keys(t, "rw/"); len(keys) != 1 {
		t.Fatalf("Unlock with another acquisition's token deleted the key: %v", keys)
	}
	if _, err := env.RWLocks.Unlock(ctx, &coordproxyv1.UnlockRequest{Key: w.Key, FencingToken: w.FencingToken}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.RWLocks.Unlock(ctx, &coordproxyv1.UnlockRequest{Key: w.Key, FencingToken: w.FencingToken}); err != nil {
		t.Fatalf("retried Unlock: %v, want success", err)
	}
	if keys := env.Keys(t, "rw/"); len(keys) != 0 {
		t.Fatalf("after Unlock: %v", keys)
	}
}
