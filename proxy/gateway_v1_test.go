package proxy_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	clientv3 "go.etcd.io/etcd/client/v3"
	epb "go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
)

// gwKey is a coordproxy.v1.Key as the gateway writes it: bytes in base64,
// int64 as strings, zero values left out.
type gwKey struct {
	Key            string `json:"key"`
	Value          string `json:"value"`
	Lease          string `json:"lease"`
	CreateRevision string `json:"create_revision"`
	ModRevision    string `json:"mod_revision"`
	TTL            string `json:"ttl"`
	GrantedTTL     string `json:"granted_ttl"`
}

type gwHeader struct {
	ClusterID string `json:"cluster_id"`
	Revision  string `json:"revision"`
}

// ElectionService through the JSON gateway: Observe streams
// newline-delimited JSON messages ({"result": ...}, as etcd's gateway
// streams), Describe answers one JSON object.
func TestGateway_electionServiceObserveAndDescribe(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	ctx := proxytest.Ctx(t)
	base := "http://" + env.Proxy.Addr().String()
	name := b64("gw-election")

	octx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, _ := http.NewRequestWithContext(octx, http.MethodPost, base+"/coordproxy/v1/election/observe", strings.NewReader(fmt.Sprintf(`{"name":%q}`, name)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("observe: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("observe: HTTP %d", resp.StatusCode)
	}
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		r := bufio.NewReader(resp.Body)
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return
			}
			lines <- l
		}
	}()
	type event struct {
		Header   gwHeader `json:"header"`
		Event    string   `json:"event"`
		Leader   *gwKey   `json:"leader"`
		Revision string   `json:"revision"`
	}
	next := func(want string) event {
		t.Helper()
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("observe stream ended before %s", want)
			}
			var m struct {
				Result event `json:"result"`
			}
			if err := json.Unmarshal([]byte(l), &m); err != nil {
				t.Fatalf("observe line %q: %v", l, err)
			}
			if m.Result.Event != want || m.Result.Revision == "" || m.Result.Header.Revision != m.Result.Revision || m.Result.Header.ClusterID == "" {
				t.Fatalf("observe line %q, want %s with a revision and a header", l, want)
			}
			return m.Result
		case <-time.After(30 * time.Second):
			t.Fatalf("no %s within 30s", want)
			return event{}
		}
	}
	if e := next("EVENT_CURRENT"); e.Leader != nil {
		t.Fatalf("CURRENT with leader %+v on an empty election", e.Leader)
	}

	leaderLease := env.Grant(t, 60)
	leader, err := env.Election.Campaign(ctx, &epb.CampaignRequest{Name: []byte("gw-election"), Lease: leaderLease, Value: []byte("v1")})
	if err != nil {
		t.Fatal(err)
	}
	e := next("EVENT_ELECTED")
	if e.Leader == nil || e.Leader.Value != b64("v1") || e.Leader.Key != b64(string(leader.Leader.Key)) ||
		e.Leader.CreateRevision != strconv.FormatInt(leader.Leader.Rev, 10) || e.Revision != e.Leader.CreateRevision {
		t.Fatalf("ELECTED %+v at %s, want the leader %s with value v1 at its create revision %d", e.Leader, e.Revision, leader.Leader.Key, leader.Leader.Rev)
	}

	candidateLease := env.Grant(t, 30)
	campaigned := make(chan error, 1)
	go func() {
		_, err := env.Election.Campaign(ctx, &epb.CampaignRequest{Name: []byte("gw-election"), Lease: candidateLease, Value: []byte("w")})
		campaigned <- err
	}()
	env.WaitKeys(t, "gw-election/", 2)

	code, body := post(t, base, "/coordproxy/v1/election/describe", fmt.Sprintf(`{"name":%q}`, name))
	var d struct {
		Header     gwHeader `json:"header"`
		Leader     *gwKey   `json:"leader"`
		Candidates []gwKey  `json:"candidates"`
		Waiting    string   `json:"waiting"`
	}
	if err := json.Unmarshal([]byte(body), &d); err != nil || code != http.StatusOK {
		t.Fatalf("describe: %d %s (%v)", code, body, err)
	}
	if d.Leader == nil || d.Leader.Value != b64("v1") || d.Leader.GrantedTTL != "60" || d.Leader.TTL == "" ||
		len(d.Candidates) != 1 || d.Candidates[0].Value != b64("w") || d.Candidates[0].TTL != "" || d.Waiting != "1" || d.Header.Revision == "" {
		t.Fatalf("describe: %s; want the leader v1 with its TTLs, then candidate w, waiting 1", body)
	}
	code, body = post(t, base, "/coordproxy/v1/election/describe", `{"name":""}`)
	if want := `{"code":3,"message":"\"name\" field must be provided"}`; code != http.StatusBadRequest || compactJSON(t, body) != want {
		t.Fatalf("describe without a name: %d %s, want 400 %s", code, body, want)
	}

	if _, err := env.Election.Resign(ctx, &epb.ResignRequest{Leader: leader.Leader}); err != nil {
		t.Fatal(err)
	}
	if e := next("EVENT_ELECTED"); e.Leader == nil || e.Leader.Value != b64("w") {
		t.Fatalf("ELECTED %+v after the leader resigned, want the candidate w", e.Leader)
	}
	if err := <-campaigned; err != nil {
		t.Fatal(err)
	}
	revoked, err := env.KV.Revoke(ctx, clientv3.LeaseID(candidateLease))
	if err != nil {
		t.Fatal(err)
	}
	if e := next("EVENT_NO_LEADER"); e.Leader != nil || e.Revision != strconv.FormatInt(revoked.Header.Revision, 10) {
		t.Fatalf("NO_LEADER with leader %+v at %s, want none at the revocation's revision %d", e.Leader, e.Revision, revoked.Header.Revision)
	}
}

func compactJSON(t *testing.T, s string) string {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("not JSON: %q", s)
	}
	b, _ := json.Marshal(v)
	return string(b)
}
