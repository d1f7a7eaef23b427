package lockproxy_test

import (
	"testing"

	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A retried Unlock of an earlier acquisition (same lease, same name, so the
// same key) carries that acquisition's fencing token: it answers success
// and leaves the newer acquisition held (etcd #22082/#22115 natively delete
// it).
func TestUnlock_withAnOldFencingTokenLeavesTheNewerHold(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	lease := env.Grant(t, 30)

	first, err := env.Locks.Lock(ctx, &coordproxyv1.LockRequest{Name: []byte("retry"), Lease: lease})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Locks.Unlock(ctx, &coordproxyv1.UnlockRequest{Key: first.Key, FencingToken: first.FencingToken}); err != nil {
		t.Fatal(err)
	}
	second, err := env.Locks.Lock(ctx, &coordproxyv1.LockRequest{Name: []byte("retry"), Lease: lease})
	if err != nil {
		t.Fatal(err)
	}
	if string(second.Key) != string(first.Key) || second.FencingToken <= first.FencingToken {
		t.Fatalf("second acquisition %q@%d, first %q@%d: want the same key, a newer token", second.Key, second.FencingToken, first.Key, first.FencingToken)
	}

	// The first Unlock's retry, late.
	if _, err := env.Locks.Unlock(ctx, &coordproxyv1.UnlockRequest{Key: first.Key, FencingToken: first.FencingToken}); err != nil {
		t.Fatalf("retried Unlock of the first acquisition: %v, want success", err)
	}
	if keys := env.Keys(t, "retry/"); len(keys) != 1 || keys[0].CreateRevision != second.FencingToken {
		t.Fatalf("after the retried Unlock: keys %v, want the second acquisition (create revision %d) held", keys, second.FencingToken)
	}
	// Another lease's key is still refused, with or without a token.
	other := env.Grant(t, 30)
	theirs, err := env.Locks.Lock(ctx, &coordproxyv1.LockRequest{Name: []byte("theirs"), Lease: other})
	if err != nil {
		t.Fatal(err)
	}
	forged := []byte("theirs/" + string(theirs.Key[len("theirs/"):]))
	if _, err := env.Locks.Unlock(ctx, &coordproxyv1.UnlockRequest{Key: forged, FencingToken: -1}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("Unlock with a negative token: %v, want InvalidArgument", err)
	}
	if len(env.Keys(t, "theirs/")) != 1 {
		t.Fatal("a refused Unlock deleted the key")
	}
	// The right token releases.
	if _, err := env.Locks.Unlock(ctx, &coordproxyv1.UnlockRequest{Key: second.Key, FencingToken: second.FencingToken}); err != nil {
		t.Fatal(err)
	}
	if keys := env.Keys(t, "retry/"); len(keys) != 0 {
		t.Fatalf("after Unlock with the current token: %v", keys)
	}
}
