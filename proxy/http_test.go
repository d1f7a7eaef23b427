package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
	"google.golang.org/grpc/health/grpc_health_v1"
)

// post sends body to base+path as etcd's curl tests do and returns the
// status code and the body.
func post(t *testing.T, base, path, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(base+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("POST %s: reading body: %v", path, err)
	}
	return resp.StatusCode, string(b)
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// shape is a JSON body with every value replaced by its JSON type, so that
// two servers' answers compare by field names and encodings (int64 as
// strings) rather than by revisions and IDs.
func shape(t *testing.T, body string) string {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("not JSON: %q: %v", body, err)
	}
	var out []string
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				walk(path+"."+k, e)
			}
		case []any:
			for _, e := range x {
				walk(path+"[]", e)
			}
		default:
			out = append(out, fmt.Sprintf("%s:%T", path, x))
		}
	}
	walk("", v)
	sort.Strings(out)
	return strings.Join(out, " ")
}

// curlFlows are etcd's tests/e2e/v3_curl_lock_test.go and
// v3_curl_election_test.go, plus the lease gateway, against base. Every step
// is recorded: status code, and the body's shape (successes) or the whole
// body (errors), so that etcd's answers and coordproxy's can be compared.
func curlFlows(t *testing.T, base, prefix string) []string {
	var rec []string
	step := func(name string, code int, body string) {
		if code == http.StatusOK {
			rec = append(rec, fmt.Sprintf("%s: %d %s", name, code, shape(t, body)))
		} else {
			// protojson varies its whitespace from build to build on purpose.
			var b bytes.Buffer
			if err := json.Compact(&b, []byte(body)); err != nil {
				t.Fatalf("%s: error body is not JSON: %q", name, body)
			}
			rec = append(rec, fmt.Sprintf("%s: %d %s", name, code, b.String()))
		}
	}

	// Lock, then Unlock with the returned key.
	code, body := post(t, base, "/v3/lock/lock", fmt.Sprintf(`{"name":%q}`, b64(prefix+"lock1")))
	step("lock", code, body)
	var lock struct {
		Key string `json:"key"`
	}
	json.Unmarshal([]byte(body), &lock)
	if lock.Key == "" {
		t.Fatalf("lock answered without a key: %d %s", code, body)
	}
	code, body = post(t, base, "/v3/lock/unlock", fmt.Sprintf(`{"key":%q}`, lock.Key))
	if !strings.Contains(body, "revision") {
		t.Fatalf("unlock: %d %s", code, body)
	}
	step("unlock", code, body)

	// Campaign, Observe sees the leader, Proclaim.
	name := prefix + "/election-prefix"
	code, body = post(t, base, "/v3/election/campaign", fmt.Sprintf(`{"name":%q,"value":%q}`, b64(name), b64("v1")))
	step("campaign", code, body)
	var camp struct {
		Leader struct{ Name, Key, Rev, Lease string } `json:"leader"`
	}
	if err := json.Unmarshal([]byte(body), &camp); err != nil || camp.Leader.Key == "" {
		t.Fatalf("campaign: %d %s", code, body)
	}
	if _, err := strconv.ParseInt(camp.Leader.Rev, 10, 64); err != nil {
		t.Fatalf("campaign: leader.rev %q is not an int64 as a string", camp.Leader.Rev)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v3/election/observe", strings.NewReader(fmt.Sprintf(`{"name":%q}`, b64(name))))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("observe: %v", err)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	cancel()
	resp.Body.Close()
	if err != nil || !strings.Contains(line, fmt.Sprintf(`"key":"%s"`, camp.Leader.Key)) {
		t.Fatalf("observe: first line %q (%v); want the leader's key %s", line, err, camp.Leader.Key)
	}
	step("observe", resp.StatusCode, line)

	code, body = post(t, base, "/v3/election/proclaim", fmt.Sprintf(`{"leader":{"name":%q,"key":%q,"rev":%q,"lease":%q},"value":%q}`,
		camp.Leader.Name, camp.Leader.Key, camp.Leader.Rev, camp.Leader.Lease, b64("v2")))
	if !strings.Contains(body, `"revision":`) {
		t.Fatalf("proclaim: %d %s", code, body)
	}
	step("proclaim", code, body)
	code, body = post(t, base, "/v3/election/leader", fmt.Sprintf(`{"name":%q}`, b64(name)))
	if !strings.Contains(body, b64("v2")) {
		t.Fatalf("leader after proclaim: %d %s", code, body)
	}
	step("leader", code, body)
	code, body = post(t, base, "/v3/election/resign", fmt.Sprintf(`{"leader":{"name":%q,"key":%q,"rev":%q,"lease":%q}}`,
		camp.Leader.Name, camp.Leader.Key, camp.Leader.Rev, camp.Leader.Lease))
	step("resign", code, body)

	// The error cases of etcd's curl tests: the whole body must match.
	code, body = post(t, base, "/v3/election/proclaim", fmt.Sprintf(`{"value":%q}`, b64("v2")))
	if !strings.Contains(body, `"message":"\"leader\" field must be provided"`) {
		t.Fatalf("proclaim without leader: %d %s", code, body)
	}
	step("proclaim-missing-leader", code, body)
	code, body = post(t, base, "/v3/election/resign", `{}`)
	step("resign-missing-leader", code, body)
	code, body = post(t, base, "/v3/election/leader", fmt.Sprintf(`{"name":%q}`, b64(prefix+"hello")))
	if !strings.Contains(body, "election: no leader") {
		t.Fatalf("leader of an empty election: %d %s", code, body)
	}
	step("leader-none", code, body)
	code, body = post(t, base, "/v3/lock/lock", `{}`)
	step("lock-missing-name", code, body)

	// Leases through the gateway.
	code, body = post(t, base, "/v3/lease/grant", `{"TTL":"30"}`)
	step("lease-grant", code, body)
	var grant struct{ ID string }
	json.Unmarshal([]byte(body), &grant)
	code, body = post(t, base, "/v3/lease/timetolive", fmt.Sprintf(`{"ID":%q}`, grant.ID))
	step("lease-timetolive", code, body)
	code, body = post(t, base, "/v3/lease/revoke", fmt.Sprintf(`{"ID":%q}`, grant.ID))
	step("lease-revoke", code, body)
	code, body = post(t, base, "/v3/lease/revoke", fmt.Sprintf(`{"ID":%q}`, grant.ID))
	step("lease-revoke-again", code, body)

	// KV through the gateway (etcd's v3_curl_kv_test.go), and malformed
	// JSON, which gets HTTP 400 with etcd's error body.
	code, body = post(t, base, "/v3/kv/put", fmt.Sprintf(`{"key":%q,"value":%q}`, b64(prefix+"k"), b64("v")))
	step("kv-put", code, body)
	code, body = post(t, base, "/v3/kv/range", fmt.Sprintf(`{"key":%q}`, b64(prefix+"k")))
	step("kv-range", code, body)
	code, body = post(t, base, "/v3/kv/txn", fmt.Sprintf(`{"compare":[{"key":%q,"result":"EQUAL","target":"VALUE","value":%q}],"success":[{"request_delete_range":{"key":%q}}]}`, b64(prefix+"k"), b64("v"), b64(prefix+"k")))
	step("kv-txn", code, body)
	code, body = post(t, base, "/v3/kv/put", `{"key":}`)
	step("kv-put-malformed", code, body)
	code, body = post(t, base, "/v3/lock/lock", `not json`)
	step("lock-malformed", code, body)
	code, body = post(t, base, "/v3/maintenance/status", `{}`)
	step("maintenance-status", code, body)
	return rec
}

// The JSON gateway answers etcd's curl flows exactly as etcd's own gateway:
// same paths, field names, encodings and error bodies.
func TestGateway_etcdCurlFlowsAnswerAsEtcd(t *testing.T) {
	// etcd's gateway dials etcd's configured client URL: it needs a real port.
	etcd, err := proxy.StartEmbeddedEtcd(t.TempDir(), proxy.EmbedOptions{UnsafeNoFsync: true, LogLevel: "error", ClientAddr: proxytest.FreeAddr(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	env := proxytest.NewProxyEnv(t, etcd, etcd.URL, proxy.Config{})
	native := curlFlows(t, env.Etcd.URL, "native/")
	viaProxy := curlFlows(t, "http://"+env.Proxy.Addr().String(), "proxy/")
	if len(native) != len(viaProxy) {
		t.Fatalf("steps differ: etcd %d, coordproxy %d", len(native), len(viaProxy))
	}
	// Where coordproxy differs on purpose (README, "Differences from etcd"):
	// etcd takes a lock named "" (the whole keyspace's prefix).
	documented := map[string]string{
		"lock-missing-name": `lock-missing-name: 400 {"code":3,"message":"\"name\" field must be provided"}`,
	}
	for _, l := range viaProxy {
		if strings.HasSuffix(strings.SplitN(l, ":", 2)[0], "-malformed") && !strings.Contains(l, ": 400 {\"code\":3,") {
			t.Errorf("malformed JSON answered %s; want HTTP 400 with an InvalidArgument body", l)
		}
	}
	for i := range native {
		n, p := strings.ReplaceAll(native[i], b64("native/"), ""), strings.ReplaceAll(viaProxy[i], b64("proxy/"), "")
		if want, ok := documented[strings.SplitN(n, ":", 2)[0]]; ok {
			if p != want {
				t.Errorf("step %d: coordproxy answered %s; want %s", i, p, want)
			}
			continue
		}
		if n != p {
			t.Errorf("step %d differs:\n  etcd:       %s\n  coordproxy: %s", i, n, p)
		}
	}
}

// /healthz says the process is up; /readyz that etcd answers with a leader;
// /metrics has per-RPC counts; grpc.health.v1 reports every service.
func TestHTTP_healthReadyMetricsAndGRPCHealth(t *testing.T) {
	env := proxytest.New(t, proxy.Config{})
	base := "http://" + env.Proxy.Addr().String()
	get := func(path string) (int, string) {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz"); code != 200 {
		t.Fatalf("/healthz: %d %s", code, body)
	}
	if code, body := get("/readyz"); code != 200 {
		t.Fatalf("/readyz with etcd up: %d %s", code, body)
	}

	hc := grpc_health_v1.NewHealthClient(env.Conn)
	for _, svc := range []string{"", "v3lockpb.Lock", "v3electionpb.Election", "etcdserverpb.Lease"} {
		r, err := hc.Check(proxytest.Ctx(t), &grpc_health_v1.HealthCheckRequest{Service: svc})
		if err != nil || r.Status != grpc_health_v1.HealthCheckResponse_SERVING {
			t.Fatalf("health of %q: %v %v", svc, r, err)
		}
	}

	lease := env.Grant(t, 30)
	code, body := post(t, base, "/v3/lock/lock", fmt.Sprintf(`{"name":%q,"lease":"%d"}`, b64("m"), lease))
	if code != 200 {
		t.Fatalf("lock: %d %s", code, body)
	}
	_, metrics := get("/metrics")
	for _, want := range []string{
		`grpc_server_handled_total{grpc_code="OK",grpc_method="Lock",grpc_service="v3lockpb.Lock",grpc_type="unary"} 1`,
		`grpc_server_handling_seconds_bucket{grpc_method="Lock"`,
		`grpc_server_handled_total{grpc_code="OK",grpc_method="Campaign",grpc_service="v3electionpb.Election",grpc_type="unary"} 0`,
		"coordproxy_etcd_requests_in_flight",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// etcd gone: /readyz says so within its bound, /healthz stays up.
	env.Etcd.Close()
	start := time.Now()
	code, body = get("/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, `"status":"not ready"`) {
		t.Fatalf("/readyz with etcd down: %d %s", code, body)
	}
	if took := time.Since(start); took > proxy.ReadyTimeout+5*time.Second {
		t.Errorf("/readyz took %v with etcd down; bound is %v", took, proxy.ReadyTimeout)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("/healthz with etcd down: %d", code)
	}
}
