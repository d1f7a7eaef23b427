package electionproxy

import (
	"github.com/coordproxy/coordproxy/lockproxy"
	coordproxyv1 "github.com/coordproxy/coordproxy/proto/coordproxy/v1"
)

// Elections implements coordproxy's own ElectionService (proto/coordproxy/v1):
// Describe, and an Observe that also reports the loss of the leader.
type Elections struct {
	coordproxyv1.UnimplementedElectionServiceServer
	b *lockproxy.Backend
}

// NewElections returns coordproxy's ElectionService over b.
func NewElections(b *lockproxy.Backend) *Elections { return &Elections{b: b} }
