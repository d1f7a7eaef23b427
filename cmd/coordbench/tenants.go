package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// The noisy-neighbour scenario's tenants are told apart by the proxy as it
// tells real tenants apart: by their client certificates (their
// identities, package authz). tenantPKI makes a CA, a server certificate
// for 127.0.0.1 and a client certificate per tenant, as PEM files in dir,
// for a proxy that asks for client certificates (mTLS).
type tenantPKI struct {
	caFile, certFile, keyFile string
	pool                      *x509.CertPool
	clients                   map[string]tls.Certificate
}

func newTenantPKI(dir string, tenants ...string) (*tenantPKI, error) {
	p := &tenantPKI{pool: x509.NewCertPool(), clients: map[string]tls.Certificate{}}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "coordbench CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	p.pool.AddCert(ca)
	p.caFile = filepath.Join(dir, "ca.pem")
	if err := writePEM(p.caFile, "CERTIFICATE", caDER); err != nil {
		return nil, err
	}
	issue := func(serial int64, cn string, server bool) (certDER []byte, key *ecdsa.PrivateKey, err error) {
		if key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			return nil, nil, err
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		if server {
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
			tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		}
		certDER, err = x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
		return certDER, key, err
	}
	der, key, err := issue(2, "coordbench proxy", true)
	if err != nil {
		return nil, err
	}
	p.certFile, p.keyFile = filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
	if err := writePEM(p.certFile, "CERTIFICATE", der); err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	if err := writePEM(p.keyFile, "EC PRIVATE KEY", keyDER); err != nil {
		return nil, err
	}
	for i, tenant := range tenants {
		der, key, err := issue(int64(3+i), tenant, false)
		if err != nil {
			return nil, err
		}
		p.clients[tenant] = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	}
	return p, nil
}

// clientTLS is tenant's TLS configuration toward the proxy.
func (p *tenantPKI) clientTLS(tenant string) *tls.Config {
	return &tls.Config{RootCAs: p.pool, Certificates: []tls.Certificate{p.clients[tenant]}, MinVersion: tls.VersionTLS12}
}

func writePEM(file, typ string, der []byte) error {
	return os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}
