package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/coordproxy/coordproxy/proxy/proxytest"
)

func TestRun_logFormat(t *testing.T) {
	etcd := proxytest.StartEtcd(t)
	tests := []struct {
		format string
		// record reports whether line is one log record in format, and its message.
		record func(line string) (msg string, ok bool)
	}{
		{"text", func(line string) (string, bool) {
			if !strings.HasPrefix(line, "time=") || !strings.Contains(line, " level=") {
				return "", false
			}
			_, msg, ok := strings.Cut(line, " msg=")
			return strings.Trim(msg, `"`), ok
		}},
		{"json", func(line string) (string, bool) {
			var rec map[string]any
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				return "", false
			}
			msg, ok := rec["msg"].(string)
			_, hasLevel := rec["level"]
			return msg, ok && hasLevel
		}},
	}
	for _, tt := range tests {
		t.Run(tt.format, func(t *testing.T) {
			p := startBinary(t, t.TempDir(), "--endpoints", etcd.URL, "--listen", proxytest.FreeAddr(t), "--log-format", tt.format)
			p.waitFor(t, "serving etcd Lock, Election")
			p.stop(t)
			var msgs []string
			for _, line := range strings.Split(p.out.text(), "\n") {
				msg, ok := tt.record(line)
				if !ok {
					t.Errorf("not a %s log record: %q", tt.format, line)
				}
				msgs = append(msgs, msg)
			}
			all := strings.Join(msgs, "\n")
			for _, want := range []string{"serving etcd Lock, Election", "stopping", "stopped"} {
				if !strings.Contains(all, want) {
					t.Errorf("no record with message %q in:\n%s", want, p.out.text())
				}
			}
		})
	}
}
