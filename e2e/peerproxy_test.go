package e2e

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"
)

// peerProxy stands in front of one member's peer port and can cut that
// member off from chosen peers.
//
// etcd's pkg/v3/proxy works on bytes and cannot tell who is talking, so
// blackholing a member's proxy leaves the member's own outgoing pipeline
// traffic flowing (etcd's robustness tests say so: "peer traffic is still
// possible because member has 'pipeline' with peers"). Every raft request
// names its sender in the X-Server-From header, and every connection
// between two members passes through the proxy of one of them, so a proxy
// that refuses requests from cut-off senders, and ends the ones in flight,
// separates the two members in both directions: a real partition.
type peerProxy struct {
	ln  net.Listener
	srv *http.Server
	rp  *httputil.ReverseProxy

	mu   sync.Mutex
	cut  map[string]bool // member IDs (hex) this member cannot hear or reach
	live map[*liveRequest]struct{}
}

type liveRequest struct {
	from   string
	cancel context.CancelFunc
}

func startPeerProxy(t *testing.T, addr string, to string) *peerProxy {
	t.Helper()
	target, err := url.Parse(to)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("peer proxy: %v", err)
	}
	p := &peerProxy{ln: ln, cut: map[string]bool{}, live: map[*liveRequest]struct{}{}}
	p.rp = httputil.NewSingleHostReverseProxy(target)
	p.rp.FlushInterval = -1                    // raft streams are long chunked responses
	p.rp.ErrorLog = log.New(io.Discard, "", 0) // cut streams are the point
	p.rp.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
		w.WriteHeader(http.StatusBadGateway)
	}
	p.srv = &http.Server{Handler: p}
	go p.srv.Serve(ln)
	t.Cleanup(func() { p.srv.Close() })
	return p
}

func (p *peerProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	from := r.Header.Get("X-Server-From")
	p.mu.Lock()
	if from != "" && p.cut[from] {
		p.mu.Unlock()
		drop(w)
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	lr := &liveRequest{from: from, cancel: cancel}
	p.live[lr] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.live, lr)
		p.mu.Unlock()
		cancel()
	}()
	p.rp.ServeHTTP(w, r.WithContext(ctx))
}

// drop closes the connection without an answer, as a partition would.
func drop(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			conn.Close()
			return
		}
	}
	panic(http.ErrAbortHandler)
}

// setCut replaces the set of peers this member is cut off from and ends
// their requests in flight.
func (p *peerProxy) setCut(ids ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = map[string]bool{}
	for _, id := range ids {
		p.cut[id] = true
	}
	for lr := range p.live {
		if p.cut[lr.from] {
			lr.cancel()
		}
	}
}
