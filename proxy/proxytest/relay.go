package proxytest

import (
	"net"
	"sync"
	"testing"
)

// Relay is a TCP relay in front of one address that the test controls: what
// a load balancer, a middlebox or the network between a client and a proxy
// can do to the client's connections. Unlike FaultProxy it can reset every
// connection and refuse new ones.
type Relay struct {
	t    testing.TB
	to   string
	addr string

	mu      sync.Mutex
	ln      net.Listener
	conns   map[*relayPair]struct{}
	gate    chan struct{} // closed while bytes pass; open while blackholed
	refused bool
	closed  bool
}

type relayPair struct{ a, b *net.TCPConn }

// NewRelay starts a relay to the address to, on a free loopback port; it is
// closed at cleanup.
func NewRelay(t testing.TB, to string) *Relay {
	t.Helper()
	// Its own port from the start: a port found free and listened on later
	// may meanwhile be taken by an outgoing connection.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("relay: %v", err)
	}
	r := &Relay{t: t, to: to, addr: ln.Addr().String(), ln: ln, conns: map[*relayPair]struct{}{}, gate: make(chan struct{})}
	close(r.gate)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go r.relay(c.(*net.TCPConn))
		}
	}()
	t.Cleanup(r.close)
	return r
}

// Addr is where clients connect.
func (r *Relay) Addr() string { return r.addr }

func (r *Relay) relay(a *net.TCPConn) {
	r.mu.Lock()
	refused := r.refused
	r.mu.Unlock()
	if refused {
		a.SetLinger(0)
		a.Close()
		return
	}
	// A blackholed relay takes connections and passes nothing, as a
	// network that drops every packet leaves a connect hanging.
	r.wait()
	c, err := net.Dial("tcp", r.to)
	if err != nil {
		a.SetLinger(0)
		a.Close()
		return
	}
	p := &relayPair{a: a, b: c.(*net.TCPConn)}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		p.reset()
		return
	}
	r.conns[p] = struct{}{}
	r.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { r.copy(p.b, p.a); done <- struct{}{} }()
	go func() { r.copy(p.a, p.b); done <- struct{}{} }()
	<-done
	p.a.Close()
	p.b.Close()
	r.mu.Lock()
	delete(r.conns, p)
	r.mu.Unlock()
}

// copy passes what it reads from src to dst while the gate is open; what it
// read while blackholed is held, as TCP would retransmit it.
func (r *Relay) copy(dst, src *net.TCPConn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			r.wait()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (r *Relay) wait() {
	r.mu.Lock()
	g := r.gate
	r.mu.Unlock()
	<-g
}

func (p *relayPair) reset() {
	p.a.SetLinger(0) // close with a RST
	p.b.SetLinger(0)
	p.a.Close()
	p.b.Close()
}

// Conns is how many connections the relay passes now.
func (r *Relay) Conns() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.conns)
}

// Reset resets every open connection, on both sides (a load balancer's
// idle timeout, a middlebox, a network restart).
func (r *Relay) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for p := range r.conns {
		p.reset()
	}
}

// Refuse refuses new connections until Accept: each is reset as soon as
// it is made (the port stays the relay's, so that no other socket takes it
// meanwhile).
func (r *Relay) Refuse() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refused = true
}

// Accept ends Refuse.
func (r *Relay) Accept() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refused = false
}

// Blackhole lets nothing through either way, on open and new connections,
// until Heal: a silent partition.
func (r *Relay) Blackhole() {
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.gate:
		r.gate = make(chan struct{})
	default:
	}
}

// Heal ends a Blackhole: what was held passes.
func (r *Relay) Heal() {
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.gate:
	default:
		close(r.gate)
	}
}

func (r *Relay) close() {
	r.ln.Close()
	r.Heal()
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.Reset()
}
