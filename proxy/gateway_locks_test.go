package proxy_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
)

// coordproxy's LockService over the JSON gateway: TryLock, its refusal with
// the holder in the details, Describe and Unlock, as curl would use them.
func TestGateway_lockServiceRoutes(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	base := "http://" + env.Proxy.Addr().String()
	a, b := env.Grant(t, 30), env.Grant(t, 30)
	name := b64("gw-lock")

	code, body := post(t, base, "/coordproxy/v1/lock/trylock", fmt.Sprintf(`{"name":%q,"lease":"%d"}`, name, a))
	var held struct {
		Key          string `json:"key"`
		FencingToken string `json:"fencing_token"`
		Lease        string `json:"lease"`
	}
	if err := json.Unmarshal([]byte(body), &held); code != 200 || err != nil || held.FencingToken == "" || held.Lease != strconv.FormatInt(a, 10) {
		t.Fatalf("trylock: %d %s", code, body)
	}

	code, body = post(t, base, "/coordproxy/v1/lock/trylock", fmt.Sprintf(`{"name":%q,"lease":"%d"}`, name, b))
	var refused struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
		Details []struct {
			Type   string `json:"@type"`
			Holder struct {
				Key            string `json:"key"`
				CreateRevision string `json:"create_revision"`
			} `json:"holder"`
		} `json:"details"`
	}
	if err := json.Unmarshal([]byte(body), &refused); err != nil || code != 400 || refused.Code != 9 || len(refused.Details) != 1 ||
		refused.Details[0].Type != "type.googleapis.com/coordproxy.v1.Contended" ||
		refused.Details[0].Holder.Key != held.Key || refused.Details[0].Holder.CreateRevision != held.FencingToken {
		t.Fatalf("trylock of a held lock: %d %s; want FAILED_PRECONDITION naming %s", code, body, held.Key)
	}

	code, body = post(t, base, "/coordproxy/v1/lock/describe", fmt.Sprintf(`{"name":%q}`, name))
	var d struct {
		Holder struct {
			Key        string `json:"key"`
			GrantedTTL string `json:"granted_ttl"`
		} `json:"holder"`
	}
	if err := json.Unmarshal([]byte(body), &d); code != 200 || err != nil || d.Holder.Key != held.Key || d.Holder.GrantedTTL != "30" {
		t.Fatalf("describe: %d %s", code, body)
	}

	if code, body = post(t, base, "/coordproxy/v1/lock/unlock", fmt.Sprintf(`{"key":%q}`, held.Key)); code != 200 {
		t.Fatalf("unlock: %d %s", code, body)
	}
	if keys := env.Keys(t, "gw-lock/"); len(keys) != 0 {
		t.Fatalf("keys left: %v", keys)
	}
}

// SemaphoreService and RWLockService over the JSON gateway.
func TestGateway_semaphoreAndRWLockRoutes(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	base := "http://" + env.Proxy.Addr().String()
	lease := env.Grant(t, 30)

	code, body := post(t, base, "/coordproxy/v1/semaphore/acquire", fmt.Sprintf(`{"name":%q,"lease":"%d","limit":"2"}`, b64("gw-sem"), lease))
	var held struct {
		Key string `json:"key"`
	}
	if err := json.Unmarshal([]byte(body), &held); code != 200 || err != nil || held.Key == "" {
		t.Fatalf("acquire: %d %s", code, body)
	}
	code, body = post(t, base, "/coordproxy/v1/semaphore/describe", fmt.Sprintf(`{"name":%q}`, b64("gw-sem")))
	var d struct {
		Limit   string `json:"limit"`
		Holders []struct {
			Key string `json:"key"`
		} `json:"holders"`
	}
	if err := json.Unmarshal([]byte(body), &d); code != 200 || err != nil || d.Limit != "2" || len(d.Holders) != 1 || d.Holders[0].Key != held.Key {
		t.Fatalf("describe: %d %s", code, body)
	}
	if code, body = post(t, base, "/coordproxy/v1/semaphore/release", fmt.Sprintf(`{"key":%q}`, held.Key)); code != 200 {
		t.Fatalf("release: %d %s", code, body)
	}
	if code, body = post(t, base, "/coordproxy/v1/semaphore/acquire", fmt.Sprintf(`{"name":%q,"lease":"%d"}`, b64("gw-sem"), lease)); code != 400 {
		t.Fatalf("acquire without a limit: %d %s, want 400", code, body)
	}

	for _, route := range []string{"rlock", "wlock"} {
		code, body = post(t, base, "/coordproxy/v1/rwlock/"+route, fmt.Sprintf(`{"name":%q,"lease":"%d"}`, b64("gw-rw-"+route), lease))
		if err := json.Unmarshal([]byte(body), &held); code != 200 || err != nil || !strings.HasPrefix(mustB64Decode(t, held.Key), "gw-rw-"+route+"/") {
			t.Fatalf("%s: %d %s", route, code, body)
		}
		if code, body = post(t, base, "/coordproxy/v1/rwlock/unlock", fmt.Sprintf(`{"key":%q}`, held.Key)); code != 200 {
			t.Fatalf("unlock: %d %s", code, body)
		}
	}
	if keys := env.Keys(t, "gw-"); len(keys) != 0 {
		t.Fatalf("keys left: %v", keys)
	}
}

func mustB64Decode(t *testing.T, s string) string {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
