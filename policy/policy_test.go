package policy_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coordproxy/coordproxy/policy"
)

const example = `
rules:
  - identities: ["spiffe://example.org/app-a", "app-a.*"]
    prefixes: ["app-a/"]
    verbs: [lock, elect, read, write, lease]
  - identities: ["spiffe://example.org/app-b"]
    prefixes: ["app-b/", "shared/"]
    verbs: [lock, read]
  - identities: ["spiffe://example.org/app-a"]
    prefixes: ["shared/"]
    verbs: [lock]
leases:
  unrecorded: deny
`

func TestPolicy_allowsWhatARuleGivesAndNothingElse(t *testing.T) {
	p, err := policy.Parse([]byte(example))
	if err != nil {
		t.Fatal(err)
	}
	a, b := "spiffe://example.org/app-a", "spiffe://example.org/app-b"
	for _, c := range []struct {
		id     string
		verb   policy.Verb
		ranges []policy.KeyRange
		want   bool
	}{
		{a, policy.Lock, []policy.KeyRange{policy.Name("app-a/job")}, true},
		{"app-a.replica-1", policy.Write, []policy.KeyRange{policy.Key("app-a/x")}, true},
		{a, policy.Lock, []policy.KeyRange{policy.Name("app-b/job")}, false},
		{b, policy.Lock, []policy.KeyRange{policy.Name("app-a/job")}, false},
		{b, policy.Write, []policy.KeyRange{policy.Key("app-b/x")}, false}, // no write for b
		{a, policy.Lock, []policy.KeyRange{policy.Name("shared/n")}, true},
		{b, policy.Lock, []policy.KeyRange{policy.Name("shared/n")}, true},
		{a, policy.Elect, []policy.KeyRange{policy.Name("shared/n")}, false},
		{a, policy.Read, []policy.KeyRange{{Key: "app-a/", End: "app-a0"}}, true},                 // the whole prefix
		{a, policy.Read, []policy.KeyRange{{Key: "app-a/", End: "app-b"}}, false},                 // past it
		{a, policy.Read, []policy.KeyRange{{Key: "app-a/", End: "\x00"}}, false},                  // to the end
		{a, policy.Read, []policy.KeyRange{{Key: "", End: "\x00"}}, false},                        // everything
		{a, policy.Write, []policy.KeyRange{policy.Key("app-a/x"), policy.Key("app-b/y")}, false}, // a Txn touching both
		{a, policy.Lease, nil, true},
		{b, policy.Lease, nil, false},
		{"anonymous", policy.Read, []policy.KeyRange{policy.Key("app-a/x")}, false},
		{"app-a", policy.Lock, []policy.KeyRange{policy.Name("app-a/job")}, false}, // the glob wants app-a.*
	} {
		if got := p.Allows(c.id, c.verb, c.ranges...); got != c.want {
			t.Errorf("%s %s %v: %v, want %v", c.id, c.verb, c.ranges, got, c.want)
		}
	}
	if p.UnrecordedLeases {
		t.Error("leases.unrecorded: deny not read")
	}
}

func TestPolicy_aBadFileIsOneLineNamingTheRule(t *testing.T) {
	for bad, want := range map[string]string{
		"rules:\n  - identities: [a]\n    prefixes: [x/]\n    verbs: [lok]\n":                      `rule 1: unknown verb "lok"`,
		"rules:\n  - identities: [a]\n    prefixes: [x/]\n    verbs: [lock]\n  - prefixes: [y/]\n": "rule 2: no identities",
		"rules:\n  - identities: [a]\n    verbs: [lock]\n":                                         "rule 1: no prefixes",
		"rules:\n  - identities: [a]\n    prefixes: [x/]\n    verbs: [lock]\n    verb: [read]\n":   "unknown field",
		"leases:\n  unrecorded: maybe\n":                                                           `leases.unrecorded "maybe"`,
		"rules:\n  - identities: [\"a[\"]\n    prefixes: [x/]\n    verbs: [lock]\n":                "rule 1: identity",
		"quotas:\n  rules:\n    - identities: [a]\n      held: 1\n":                                "quota rule 1: no name",
		"quotas:\n  rules:\n    - name: default\n      identities: [a]\n":                          `quota rule 1: name "default" taken`,
		"quotas:\n  rules:\n    - name: x\n      identities: [a]\n    - name: y\n":                 "quota rule 2: no identities",
		"quotas:\n  rules:\n    - name: x\n      identities: [a]\n      leases: -1\n":              "quota rule 1: leases -1",
		"quotas:\n  default:\n    watches: -2\n":                                                   "quotas.default: watches -2",
		"quotas:\n  rules:\n    - name: x\n      identities: [a]\n      helds: 1\n":                "unknown field",
	} {
		_, err := policy.Parse([]byte(bad))
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: %v, want one line with %q", bad, err, want)
		}
	}
}

// Quotas: the first rule naming an identity gives its limits, else the
// default; a quota left out has no limit (nil), 0 allows none.
func TestPolicy_quotasOfAnIdentity(t *testing.T) {
	p, err := policy.Parse([]byte(`
quotas:
  default:
    waiting: 5
  rules:
    - name: billing
      identities: ["spiffe://x/billing/*"]
      held: 0
    - name: wide
      identities: ["spiffe://x/*/*"]
      held: 7
`))
	if err != nil {
		t.Fatal(err)
	}
	if !p.HasQuotas() {
		t.Fatal("HasQuotas false")
	}
	for id, want := range map[string]string{"spiffe://x/billing/w": "billing held 0 waiting none", "spiffe://x/ops/w": "wide held 7 waiting none", "anonymous": "default held none waiting 5"} {
		rule, l := p.Quota(id)
		show := func(v *int) string {
			if v == nil {
				return "none"
			}
			return fmt.Sprint(*v)
		}
		if got := fmt.Sprintf("%s held %s waiting %s", rule, show(l.Held), show(l.Waiting)); got != want {
			t.Errorf("%s: %s, want %s", id, got, want)
		}
	}
	if p, _ := policy.Parse([]byte("rules: []\n")); p.HasQuotas() {
		t.Error("a file without quotas has quotas")
	}
}

// A changed file is put in force at the next reload; a bad one keeps the
// policy in force and logs why.
func TestStore_reloadsAndKeepsTheLastGoodPolicy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	os.WriteFile(path, []byte(example), 0o644)
	var log bytes.Buffer
	s, err := policy.Load(path, slog.New(slog.NewTextHandler(&log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if s.Policy().Rules() != 3 || !strings.Contains(log.String(), "rules=3") {
		t.Fatalf("loaded %d rules; log %q", s.Policy().Rules(), log.String())
	}
	os.WriteFile(path, []byte("rules:\n  - identities: [a]\n    prefixes: [x/]\n    verbs: [lock]\n"), 0o644)
	s.Reload()
	if s.Policy().Rules() != 1 || !s.Policy().Allows("a", policy.Lock, policy.Name("x/n")) {
		t.Fatal("the changed file is not in force")
	}
	os.WriteFile(path, []byte("rules:\n  - identities: [a]\n    verbs: [lock]\n"), 0o644)
	s.Reload()
	if s.Policy().Rules() != 1 || !strings.Contains(log.String(), "policy file invalid; keeping the policy in force") || !strings.Contains(log.String(), "rule 1: no prefixes") {
		t.Fatalf("after a bad file: %d rules; log %q", s.Policy().Rules(), log.String())
	}
	var none *policy.Store
	if none.Policy() != nil {
		t.Fatal("a nil Store has a policy")
	}
}

// The policies the docs show parse.
func TestPolicy_theDocsExamplesParse(t *testing.T) {
	for file, section := range map[string]string{"../README.md": "## Who may do what", "../docs/deploy.md": "## Policies"} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		doc := string(b)
		i := strings.Index(doc, section)
		if i < 0 {
			t.Fatalf("%s has no %q", file, section)
		}
		doc = doc[i+len(section):]
		if j := strings.Index(doc, "\n## "); j >= 0 {
			doc = doc[:j]
		}
		blocks := strings.Split(doc, "```yaml\n")[1:]
		if len(blocks) == 0 {
			t.Fatalf("%s %s shows no policy", file, section)
		}
		for n, blk := range blocks {
			yml, _, _ := strings.Cut(blk, "```")
			if _, err := policy.Parse([]byte(yml)); err != nil {
				t.Errorf("%s %s, example %d: %v", file, section, n+1, err)
			}
		}
	}
}
