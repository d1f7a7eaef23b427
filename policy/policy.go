// Package policy is who may do what through coordproxy: rules that match
// caller identities to name prefixes and verbs, read from a YAML file
// (--policy) and reloaded when it changes. Without a policy every caller may
// do everything (etcd's own services behave so); with one, whatever no rule
// allows is refused.
//
//	rules:
//	  - identities: ["spiffe://example.org/ns/billing/*"]   # exact, or a glob (path.Match)
//	    prefixes: ["billing/"]                             # names and keys starting so
//	    verbs: [lock, elect, read, write, lease]
//	  - identities: ["ops-*"]
//	    prefixes: [""]                                     # everything
//	    verbs: [read, admin]
//	leases:
//	  unrecorded: allow   # leases granted straight at etcd: allow (default) or deny
//	quotas:               # per identity, per replica; a quota left out has no limit
//	  default:            # callers no quota rule names (anonymous ones too)
//	    waiting: 1000
//	  rules:              # the first rule that names the identity
//	    - name: billing   # the label of coordproxy_quota_exceeded_total
//	      identities: ["spiffe://example.org/ns/billing/*"]
//	      waiting: 100    # calls waiting (Lock, Campaign, Acquire, RLock, WLock)
//	      held: 1000      # keys held through the replica (locks, leaderships, slots)
//	      sessions: 10    # coordproxy.v1 session streams open
//	      leases: 1000    # leases granted through the replica and still live
//	      watches: 500    # watches open on Watch streams
//
// Verbs: lock (Lock, TryLock, semaphores, RW locks, and their releases),
// elect (Campaign, Proclaim, Resign), read (Leader, Observe, Describe, KV
// Range and RangeStream, Watch, and a Txn's compares and ranges), write (KV
// Put, DeleteRange, and a Txn's puts and deletes), lease (Grant, Revoke,
// KeepAlive, TimeToLive, sessions), admin (KV Compact, the list of all
// leases). Authenticate, Maintenance.Status and Cluster.MemberList need no
// verb.
package policy

import (
	"fmt"
	"path"
	"strings"

	"sigs.k8s.io/yaml"
)

// Verb is what a call does, as the rules name it.
type Verb string

// The verbs a rule names (see the package comment for what each covers).
const (
	Lock  Verb = "lock"
	Elect Verb = "elect"
	Read  Verb = "read"
	Write Verb = "write"
	Lease Verb = "lease"
	Admin Verb = "admin"
)

var verbs = map[Verb]bool{Lock: true, Elect: true, Read: true, Write: true, Lease: true, Admin: true}

// Rule allows its identities its verbs on the keys under its prefixes.
type Rule struct {
	Identities []string `json:"identities"`
	Prefixes   []string `json:"prefixes"`
	Verbs      []Verb   `json:"verbs"`
}

// Limits are the most of each resource one identity may have at once
// through one replica; nil: no limit.
type Limits struct {
	Waiting  *int `json:"waiting,omitempty"`
	Held     *int `json:"held,omitempty"`
	Sessions *int `json:"sessions,omitempty"`
	Leases   *int `json:"leases,omitempty"`
	Watches  *int `json:"watches,omitempty"`
}

// QuotaRule gives its identities its Limits, each identity its own.
type QuotaRule struct {
	// Name labels the rule's metrics (not the identities: their number is
	// unbounded). "default" is the default's.
	Name       string   `json:"name"`
	Identities []string `json:"identities"`
	Limits     `json:",inline"`
}

// DefaultQuota is the name of the limits of callers no quota rule names.
const DefaultQuota = "default"

// file is the YAML file.
type file struct {
	Rules  []Rule `json:"rules"`
	Leases struct {
		Unrecorded string `json:"unrecorded"`
	} `json:"leases"`
	Quotas struct {
		Default *Limits     `json:"default"`
		Rules   []QuotaRule `json:"rules"`
	} `json:"quotas"`
}

// Policy is a parsed policy file.
type Policy struct {
	rules        []Rule
	quotas       []QuotaRule
	defaultQuota *Limits
	// UnrecordedLeases: leases with no owner record (granted straight at
	// etcd, or before a policy was in force) may be used by anyone allowed
	// the call.
	UnrecordedLeases bool
}

// Parse reads a policy file. An error names the rule (counted from 1) and
// what is wrong with it, in one line.
func Parse(data []byte) (*Policy, error) {
	var f file
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("%s", strings.Join(strings.Fields(err.Error()), " "))
	}
	p := &Policy{rules: f.Rules, UnrecordedLeases: true, quotas: f.Quotas.Rules, defaultQuota: f.Quotas.Default}
	switch f.Leases.Unrecorded {
	case "", "allow":
	case "deny":
		p.UnrecordedLeases = false
	default:
		return nil, fmt.Errorf("leases.unrecorded %q: want allow or deny", f.Leases.Unrecorded)
	}
	for i, r := range f.Rules {
		switch {
		case len(r.Identities) == 0:
			return nil, fmt.Errorf("rule %d: no identities", i+1)
		case len(r.Prefixes) == 0:
			return nil, fmt.Errorf("rule %d: no prefixes (\"\" is every key)", i+1)
		case len(r.Verbs) == 0:
			return nil, fmt.Errorf("rule %d: no verbs", i+1)
		}
		for _, id := range r.Identities {
			if _, err := path.Match(id, ""); err != nil || id == "" {
				return nil, fmt.Errorf("rule %d: identity %q is not a name or a glob", i+1, id)
			}
		}
		for _, v := range r.Verbs {
			if !verbs[v] {
				return nil, fmt.Errorf("rule %d: unknown verb %q (want lock, elect, read, write, lease or admin)", i+1, v)
			}
		}
	}
	if err := checkQuotas(f.Quotas.Default, f.Quotas.Rules); err != nil {
		return nil, err
	}
	return p, nil
}

func checkQuotas(def *Limits, rules []QuotaRule) error {
	if def != nil {
		if err := def.check(); err != nil {
			return fmt.Errorf("quotas.default: %w", err)
		}
	}
	names := map[string]bool{DefaultQuota: true}
	for i, r := range rules {
		switch {
		case r.Name == "":
			return fmt.Errorf("quota rule %d: no name", i+1)
		case names[r.Name]:
			return fmt.Errorf("quota rule %d: name %q taken", i+1, r.Name)
		case len(r.Identities) == 0:
			return fmt.Errorf("quota rule %d: no identities", i+1)
		}
		names[r.Name] = true
		for _, id := range r.Identities {
			if _, err := path.Match(id, ""); err != nil || id == "" {
				return fmt.Errorf("quota rule %d: identity %q is not a name or a glob", i+1, id)
			}
		}
		if err := r.check(); err != nil {
			return fmt.Errorf("quota rule %d: %w", i+1, err)
		}
	}
	return nil
}

func (l Limits) check() error {
	for _, q := range []struct {
		name string
		v    *int
	}{{"waiting", l.Waiting}, {"held", l.Held}, {"sessions", l.Sessions}, {"leases", l.Leases}, {"watches", l.Watches}} {
		if q.v != nil && *q.v < 0 {
			return fmt.Errorf("%s %d: want 0 or more", q.name, *q.v)
		}
	}
	return nil
}

// HasQuotas tells whether p limits anyone.
func (p *Policy) HasQuotas() bool { return p != nil && (len(p.quotas) > 0 || p.defaultQuota != nil) }

// Quota is the name of the quota rule that names identity (the first
// that does; DefaultQuota for none) and its limits.
func (p *Policy) Quota(identity string) (string, Limits) {
	for _, r := range p.quotas {
		if (Rule{Identities: r.Identities}).matches(identity) {
			return r.Name, r.Limits
		}
	}
	if p.defaultQuota != nil {
		return DefaultQuota, *p.defaultQuota
	}
	return DefaultQuota, Limits{}
}

// Rules is how many rules p has.
func (p *Policy) Rules() int { return len(p.rules) }

// KeyRange is a key (End empty) or the keys [Key, End), as etcd's ranges
// are given; End "\x00" is every key from Key on.
type KeyRange struct{ Key, End string }

// Key is the one key k.
func Key(k string) KeyRange { return KeyRange{Key: k} }

// Name is the keys of a lock's, semaphore's or election's name: its prefix
// name + "/".
func Name(name string) KeyRange {
	return KeyRange{Key: name + "/", End: PrefixEnd(name + "/")}
}

// PrefixEnd is the end of the range of keys that start with p ("\x00": to
// the end), as etcd's clientv3.GetPrefixRangeEnd.
func PrefixEnd(p string) string {
	b := []byte(p)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1])
		}
	}
	return "\x00"
}

// within tells whether every key of r starts with prefix.
func (r KeyRange) within(prefix string) bool {
	if !strings.HasPrefix(r.Key, prefix) {
		return false
	}
	if r.End == "" || prefix == "" {
		return true
	}
	end := PrefixEnd(prefix)
	return r.End != "\x00" && (end == "\x00" || r.End <= end)
}

// Allows tells whether identity may do verb on every one of ranges (none:
// a call that names no key, such as LeaseGrant), under one rule or several.
func (p *Policy) Allows(identity string, verb Verb, ranges ...KeyRange) bool {
	any := false
	for _, r := range p.rules {
		if r.has(verb) && r.matches(identity) {
			any = true
			break
		}
	}
	if !any {
		return false
	}
next:
	for _, kr := range ranges {
		for _, r := range p.rules {
			if !r.has(verb) || !r.matches(identity) {
				continue
			}
			for _, pfx := range r.Prefixes {
				if kr.within(pfx) {
					continue next
				}
			}
		}
		return false
	}
	return true
}

func (r Rule) matches(identity string) bool {
	for _, id := range r.Identities {
		if id == identity {
			return true
		}
		if ok, _ := path.Match(id, identity); ok {
			return true
		}
	}
	return false
}

func (r Rule) has(v Verb) bool {
	for _, rv := range r.Verbs {
		if rv == v {
			return true
		}
	}
	return false
}
