package authz

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"net/url"
	"testing"

	"google.golang.org/grpc/metadata"
)

// A certificate's identity is its SPIFFE ID, else its first DNS SAN, else
// its CN; a token's is the etcd user it names.
func TestIdentity_fromCertificatesAndTokens(t *testing.T) {
	spiffe, _ := url.Parse("spiffe://example.org/ns/a/sa/worker")
	other, _ := url.Parse("https://example.org/not-an-identity")
	for _, c := range []struct {
		cert *x509.Certificate
		want string
	}{
		{&x509.Certificate{URIs: []*url.URL{other, spiffe}, DNSNames: []string{"a.example"}, Subject: pkix.Name{CommonName: "cn"}}, spiffe.String()},
		{&x509.Certificate{URIs: []*url.URL{other}, DNSNames: []string{"a.example", "b.example"}, Subject: pkix.Name{CommonName: "cn"}}, "a.example"},
		{&x509.Certificate{Subject: pkix.Name{CommonName: "cn"}}, "cn"},
		{&x509.Certificate{}, Anonymous},
	} {
		if got := certIdentity(c.cert); got != c.want {
			t.Errorf("certIdentity: %q, want %q", got, c.want)
		}
	}

	// etcd's JWT: header.claims.signature, the claims naming the user.
	claims := base64.RawURLEncoding.EncodeToString([]byte(`{"username":"alice","revision":5,"exp":1}`))
	jwt := "eyJhbGciOiJSUzI1NiJ9." + claims + ".c2ln"
	var ids identities
	ids.issued("simpletoken.7", "bob")
	for token, want := range map[string]string{jwt: "alice", "simpletoken.7": "bob", "unknown.3": Anonymous} {
		ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("token", token))
		if got := ids.of(ctx); got != want {
			t.Errorf("token %q: identity %q, want %q", token, got, want)
		}
	}
	if got := ids.of(context.Background()); got != Anonymous {
		t.Errorf("no certificate, no token: %q", got)
	}
}
