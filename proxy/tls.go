package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"

	"github.com/soheilhy/cmux"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"google.golang.org/grpc/credentials"
)

// FileError is a certificate or key file that cannot be used. Field is the
// Config field that names it, so that a caller can say which setting is
// wrong.
type FileError struct {
	Field string // CertFile, KeyFile, TrustedCAFile, EtcdCACert, EtcdCert or EtcdKey
	Path  string
	Err   error
}

func (e *FileError) Error() string { return fmt.Sprintf("%s %q: %v", e.Field, e.Path, e.Err) }
func (e *FileError) Unwrap() error { return e.Err }

// ServerTLS is the TLS configuration of the proxy's port, built by etcd's
// transport.TLSInfo as an etcd member builds its own; nil when CertFile and
// KeyFile are empty (plaintext). Each file is checked first so that a bad
// one is reported by its field; Start calls this too, so a configuration
// that passes here is the one served. As on etcd, the certificate and key
// are read again for every new connection (they can be replaced in place)
// and a TrustedCAFile makes client certificates required.
func (c Config) ServerTLS() (*tls.Config, error) {
	if c.CertFile == "" && c.KeyFile == "" && c.TrustedCAFile == "" && !c.ClientCertAuth {
		return nil, nil
	}
	if c.CertFile == "" || c.KeyFile == "" {
		return nil, errors.New("TLS needs both CertFile and KeyFile")
	}
	if err := checkKeyPair("CertFile", c.CertFile, "KeyFile", c.KeyFile); err != nil {
		return nil, err
	}
	if c.TrustedCAFile != "" {
		if err := checkCAFile("TrustedCAFile", c.TrustedCAFile); err != nil {
			return nil, err
		}
	}
	cfg, err := transport.TLSInfo{
		CertFile:       c.CertFile,
		KeyFile:        c.KeyFile,
		TrustedCAFile:  c.TrustedCAFile,
		ClientCertAuth: c.ClientCertAuth,
	}.ServerConfig()
	if err != nil {
		return nil, err
	}
	// gRPC and HTTP/1.1 share the port and cmux tells them apart after
	// the handshake: HTTP/2 goes to gRPC. gRPC clients offer only h2 (and
	// require it); curl and browsers offer h2 and http/1.1 and must get
	// http/1.1, or their requests would reach the gRPC server. Go's TLS
	// server picks the first of its own protocols the client offers.
	cfg.NextProtos = []string{"http/1.1", "h2"}
	return cfg, nil
}

// EtcdTLS is the TLS configuration for connecting to etcd, built by etcd's
// transport.TLSInfo as etcdctl builds its own; nil when no etcd certificate
// file is set, in which case https:// endpoints are verified against the
// system's roots (etcd's client does that by itself).
func (c Config) EtcdTLS() (*tls.Config, error) {
	if c.EtcdCACert == "" && c.EtcdCert == "" && c.EtcdKey == "" {
		return nil, nil
	}
	if c.EtcdCert != "" || c.EtcdKey != "" {
		if c.EtcdCert == "" || c.EtcdKey == "" {
			return nil, errors.New("an etcd client certificate needs both EtcdCert and EtcdKey")
		}
		if err := checkKeyPair("EtcdCert", c.EtcdCert, "EtcdKey", c.EtcdKey); err != nil {
			return nil, err
		}
	}
	if c.EtcdCACert != "" {
		if err := checkCAFile("EtcdCACert", c.EtcdCACert); err != nil {
			return nil, err
		}
	}
	return transport.TLSInfo{
		CertFile:      c.EtcdCert,
		KeyFile:       c.EtcdKey,
		TrustedCAFile: c.EtcdCACert,
	}.ClientConfig()
}

// checkKeyPair reports, by file, why a certificate and key cannot be used;
// transport.TLSInfo would fail on the same files but without saying which.
func checkKeyPair(certField, certFile, keyField, keyFile string) error {
	certPEM, err := readPEMFile(certField, certFile)
	if err != nil {
		return err
	}
	if err := hasCertificates(certField, certFile, certPEM); err != nil {
		return err
	}
	keyPEM, err := readPEMFile(keyField, keyFile)
	if err != nil {
		return err
	}
	if !hasPEMBlock(keyPEM, func(typ string) bool { return strings.HasSuffix(typ, "PRIVATE KEY") }) {
		return &FileError{keyField, keyFile, errors.New("no PEM private key in file")}
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		msg := strings.TrimPrefix(err.Error(), "tls: ")
		if strings.Contains(msg, "does not match") {
			msg = fmt.Sprintf("%s of the certificate in %q", msg, certFile)
		}
		return &FileError{keyField, keyFile, errors.New(msg)}
	}
	return nil
}

// checkCAFile: the file holds at least one certificate and all parse, as
// etcd's tlsutil.NewCertPool requires (it accepts a file with none).
func checkCAFile(field, file string) error {
	b, err := readPEMFile(field, file)
	if err != nil {
		return err
	}
	return hasCertificates(field, file, b)
}

func readPEMFile(field, file string) ([]byte, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, &FileError{field, file, err}
	}
	return b, nil
}

func hasCertificates(field, file string, b []byte) error {
	n := 0
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return &FileError{field, file, err}
		}
		n++
	}
	if n == 0 {
		return &FileError{field, file, errors.New("no PEM certificate in file")}
	}
	return nil
}

func hasPEMBlock(b []byte, typ func(string) bool) bool {
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return false
		}
		if typ(block.Type) {
			return true
		}
	}
}

// peerTLS lets the gRPC server see the client certificate of a connection
// whose TLS the port's listener already terminated (cmux serves gRPC and
// HTTP on one TLS port): it adds no handshake, it reports the one done.
type peerTLS struct {
	credentials.TransportCredentials
}

func newPeerTLS() credentials.TransportCredentials {
	return peerTLS{credentials.NewTLS(&tls.Config{})}
}

func (peerTLS) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	inner := c
	if m, ok := inner.(*cmux.MuxConn); ok {
		inner = m.Conn
	}
	if tc, ok := inner.(*tls.Conn); ok {
		return c, credentials.TLSInfo{State: tc.ConnectionState(), CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
	}
	// The gateway's in-process connection.
	return c, credentials.TLSInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}, nil
}

func (p peerTLS) Clone() credentials.TransportCredentials { return p }
