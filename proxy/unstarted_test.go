package proxy_test

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/coordproxy/coordproxy/proxy"
	"github.com/coordproxy/coordproxy/proxy/proxytest"
)

// Connections that never start their protocol — nothing sent, or half an
// HTTP/2 preface — are closed after the handshake bound and counted, while
// a normal client is served meanwhile (etcd keeps them all open).
func TestConnections_thatNeverStartAreClosed(t *testing.T) {
	const bound = 500 * time.Millisecond
	env := proxytest.New(t, proxy.Config{HandshakeTimeout: bound})
	addr := env.Proxy.Addr().String()
	var conns []net.Conn
	for i := range 50 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if i%2 == 1 {
			c.Write([]byte("PRI * HTTP/2.0\r\n")) // 16 of the preface's 24 bytes
		}
		conns = append(conns, c)
	}
	// Served meanwhile.
	lease := env.Grant(t, 30)
	env.MustUnlock(t, env.MustLock(t, "served", lease).Key)

	for i, c := range conns {
		// Closed by the proxy: the read ends with EOF or a reset, not with
		// this test's own (generous) deadline.
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		_, err := c.Read(make([]byte, 1))
		if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("connection %d still open: %v", i, err)
		}
	}
	proxytest.WaitFor(t, 30*time.Second, func() (bool, string) {
		n := env.Metric(t, "coordproxy_connections_unstarted_closed_total", nil)
		return n == 50, "closed unstarted connections counted"
	})
}
