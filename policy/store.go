package policy

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"
)

// Store is the policy in force, read from a file and read again when the
// file changes; a file that does not parse keeps the policy in force, and
// says why. A nil *Store is no policy: everything is allowed.
type Store struct {
	path string
	log  *slog.Logger
	cur  atomic.Pointer[Policy]
	last []byte
}

// ReloadEvery is how often the file is checked for a change.
const ReloadEvery = time.Second

// Load reads the policy at path; an error (the file missing, a bad rule)
// is one line naming the file and the rule. Watch then keeps it current.
func Load(path string, log *slog.Logger) (*Store, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	p, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("policy %s: %w", path, err)
	}
	s := &Store{path: path, log: log, last: data}
	s.cur.Store(p)
	log.Info("policy loaded", "file", path, "rules", p.Rules())
	return s, nil
}

// Policy is the policy in force; nil for a nil Store.
func (s *Store) Policy() *Policy {
	if s == nil {
		return nil
	}
	return s.cur.Load()
}

// Watch reads the file again every ReloadEvery until ctx ends, and puts a
// changed one in force if it parses.
func (s *Store) Watch(ctx context.Context) {
	t := time.NewTicker(ReloadEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.Reload()
		}
	}
}

// Reload reads the file now and puts it in force if it changed and parses.
func (s *Store) Reload() {
	data, err := os.ReadFile(s.path)
	if err != nil {
		s.log.Error("policy file unreadable; keeping the policy in force", "file", s.path, "error", err)
		return
	}
	if bytes.Equal(data, s.last) {
		return
	}
	s.last = data
	p, err := Parse(data)
	if err != nil {
		s.log.Error("policy file invalid; keeping the policy in force", "file", s.path, "error", err.Error())
		return
	}
	s.cur.Store(p)
	s.log.Info("policy reloaded", "file", s.path, "rules", p.Rules())
}
