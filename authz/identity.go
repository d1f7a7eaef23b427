package authz

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/soheilhy/cmux"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// Who calls: under mTLS, the client certificate's SPIFFE ID (a spiffe://
// URI SAN), else its first DNS SAN, else its subject CN; with an etcd token,
// the etcd user the token names (a JWT's username claim, or the user a
// simple token was issued to through this replica); otherwise "anonymous".
// The JSON gateway's calls carry the HTTP client's identity (gatewayIdentity)
// into the in-process gRPC server, which trusts it only from there.

// Anonymous is the identity of a caller that shows none.
const Anonymous = "anonymous"

// gatewayIdentity is the metadata the gateway sets on its in-process calls.
const gatewayIdentity = "coordproxy-gateway-identity"

// certIdentity is a client certificate's identity.
func certIdentity(c *x509.Certificate) string {
	for _, u := range c.URIs {
		if u.Scheme == "spiffe" {
			return u.String()
		}
	}
	if len(c.DNSNames) > 0 {
		return c.DNSNames[0]
	}
	if c.Subject.CommonName != "" {
		return c.Subject.CommonName
	}
	return Anonymous
}

// identities knows the etcd users of simple tokens issued through this
// replica's Auth.Authenticate (a JWT names its user itself).
type identities struct {
	mu     sync.Mutex
	tokens map[string]tokenUser
}

type tokenUser struct {
	user string
	at   time.Time
}

// tokenTTL is how long a simple token's user is remembered (etcd's
// --auth-token-ttl defaults to 300 s).
const tokenTTL = 15 * time.Minute

func (ids *identities) issued(token, user string) {
	ids.mu.Lock()
	defer ids.mu.Unlock()
	if ids.tokens == nil {
		ids.tokens = map[string]tokenUser{}
	}
	now := time.Now()
	for t, u := range ids.tokens {
		if now.Sub(u.at) > tokenTTL {
			delete(ids.tokens, t)
		}
	}
	ids.tokens[token] = tokenUser{user: user, at: now}
}

// of is the identity of the call on ctx.
func (ids *identities) of(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok {
		if p.Addr != nil && p.Addr.Network() == "bufconn" {
			if v := metadata.ValueFromIncomingContext(ctx, gatewayIdentity); len(v) == 1 {
				return v[0]
			}
		}
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.PeerCertificates) > 0 {
			return certIdentity(info.State.PeerCertificates[0])
		}
	}
	if v := metadata.ValueFromIncomingContext(ctx, rpctypes.TokenFieldNameGRPC); len(v) > 0 {
		return ids.tokenUser(v[0])
	}
	return Anonymous
}

// tokenUser is the etcd user token names: a JWT's username claim, or the
// user a simple token was issued to through this replica; else Anonymous.
func (ids *identities) tokenUser(token string) string {
	if u := jwtUser(token); u != "" {
		return u
	}
	ids.mu.Lock()
	defer ids.mu.Unlock()
	if u, ok := ids.tokens[token]; ok {
		return u.user
	}
	return Anonymous
}

// jwtUser is the username claim of an etcd JWT token, "" for another token.
// It is not verified here: every etcd request made for the call carries
// the token, and etcd refuses a forged one.
func jwtUser(token string) string {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return ""
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return ""
	}
	var claims struct {
		Username string `json:"username"`
	}
	if json.Unmarshal(b, &claims) != nil {
		return ""
	}
	return claims.Username
}

// httpIdentity sets an HTTP request's identity, for the gateway to pass on;
// the header a client could set to the same effect is dropped first.
func (ids *identities) httpIdentity(r *http.Request) {
	r.Header.Del("Grpc-Metadata-" + gatewayIdentity)
	id := Anonymous
	if tc, ok := r.Context().Value(tlsConnKey{}).(*tls.Conn); ok && len(tc.ConnectionState().PeerCertificates) > 0 {
		id = certIdentity(tc.ConnectionState().PeerCertificates[0])
	} else if tok := r.Header.Get("Authorization"); tok != "" {
		id = ids.tokenUser(tok)
	}
	r.Header.Set("Grpc-Metadata-"+gatewayIdentity, id)
}

// tlsConnKey holds an HTTP connection's *tls.Conn in its requests' context:
// behind cmux, net/http does not see that the connection is TLS.
type tlsConnKey struct{}

// ConnContext is the HTTP server's ConnContext: it lets Gateway see the
// client certificate of a connection whose TLS cmux's listener terminated.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if m, ok := c.(*cmux.MuxConn); ok {
		c = m.Conn
	}
	if tc, ok := c.(*tls.Conn); ok {
		return context.WithValue(ctx, tlsConnKey{}, tc)
	}
	return ctx
}
