package integration

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgoptimist/pgoptimist/internal/pgtemp"
)

// authCerts are the PEM files of a throwaway CA and a server certificate
// it signed, valid for "localhost" and 127.0.0.1.
type authCerts struct {
	CAFile, CertFile, KeyFile string
}

// authMakeCerts writes a self-signed ECDSA CA and a server certificate and
// key (DNS localhost, IP 127.0.0.1) into a temporary directory. The files are
// world-readable where PostgreSQL needs them (pgtemp copies the key with the
// right mode and owner).
func authMakeCerts(t testing.TB) authCerts {
	t.Helper()
	c, err := makeCerts(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// makeCerts is authMakeCerts into dir.
func makeCerts(dir string) (authCerts, error) {
	now := time.Now()

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return authCerts{}, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "pgoptimist test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return authCerts{}, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return authCerts{}, err
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return authCerts{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return authCerts{}, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return authCerts{}, err
	}
	c := authCerts{
		CAFile:   filepath.Join(dir, "ca.crt"),
		CertFile: filepath.Join(dir, "server.crt"),
		KeyFile:  filepath.Join(dir, "server.key"),
	}
	write := func(path, typ string, b []byte, mode os.FileMode) error {
		return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), mode)
	}
	return c, errors.Join(
		write(c.CAFile, "CERTIFICATE", caDER, 0o644),
		write(c.CertFile, "CERTIFICATE", der, 0o644),
		write(c.KeyFile, "PRIVATE KEY", keyDER, 0o600))
}

// authStartServer starts a throwaway PostgreSQL server for one test, stopped
// when the test ends.
func authStartServer(t testing.TB, opts pgtemp.Options) *pgtemp.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := pgtemp.Start(ctx, opts)
	if err != nil {
		t.Fatalf("pgtemp.Start: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Stop(); err != nil {
			t.Errorf("pgtemp Stop: %v", err)
		}
	})
	return srv
}

// relayRaw is a protocol-level client on a raw TCP connection.
type relayRaw struct {
	t    testing.TB
	conn net.Conn
	fe   *pgproto3.Frontend
}

// relayDial opens a raw TCP connection to addr with an overall deadline.
func relayDial(t testing.TB, addr string) *relayRaw {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	return &relayRaw{t: t, conn: conn, fe: pgproto3.NewFrontend(bufio.NewReader(conn), conn)}
}

// startup sends a StartupMessage for user/db.
func (r *relayRaw) startup(user, db string) {
	r.t.Helper()
	r.fe.Send(&pgproto3.StartupMessage{
		ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters:      map[string]string{"user": user, "database": db},
	})
	if err := r.fe.Flush(); err != nil {
		r.t.Fatalf("send startup: %v", err)
	}
}

// relayRawConnect does a trust-authenticated startup through addr and waits
// for the first ReadyForQuery.
func relayRawConnect(t testing.TB, addr, db string) *relayRaw {
	t.Helper()
	r := relayDial(t, addr)
	r.startup("postgres", db)
	r.untilReady()
	return r
}

// receive reads one message, failing the test on error.
func (r *relayRaw) receive() pgproto3.BackendMessage {
	r.t.Helper()
	m, err := r.fe.Receive()
	if err != nil {
		r.t.Fatalf("receive: %v", err)
	}
	return m
}

// untilReady reads messages up to ReadyForQuery, failing on an error
// response, and returns what came before it.
func (r *relayRaw) untilReady() []pgproto3.BackendMessage {
	r.t.Helper()
	var out []pgproto3.BackendMessage
	for {
		switch m := r.receive().(type) {
		case *pgproto3.ReadyForQuery:
			return out
		case *pgproto3.ErrorResponse:
			r.t.Fatalf("unexpected error: %s %s %s", m.Severity, m.Code, m.Message)
		case *pgproto3.AuthenticationOk, *pgproto3.ParameterStatus, *pgproto3.BackendKeyData:
		default:
			// pgproto3 reuses message values: keep a copy of the type only.
			out = append(out, m)
		}
	}
}

// writeRaw writes bytes as they are.
func (r *relayRaw) writeRaw(b []byte) {
	r.t.Helper()
	if _, err := r.conn.Write(b); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

// relayEnd is how a connection answered a hostile message.
type relayEnd struct {
	Err      *pgproto3.ErrorResponse // the first ErrorResponse, if any
	EOF      bool                    // the connection was closed
	Ready    bool                    // a ReadyForQuery followed (the session went on)
	ReadErr  error                   // a read error other than EOF
	Messages []string                // types of the other messages seen
}

// drain reads until ReadyForQuery following an error, EOF or a read error.
func (r *relayRaw) drain() relayEnd {
	var e relayEnd
	for {
		m, err := r.fe.Receive()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || relayIsConnReset(err) {
				e.EOF = true
			} else {
				e.ReadErr = err
			}
			return e
		}
		switch m := m.(type) {
		case *pgproto3.ErrorResponse:
			if e.Err == nil {
				cp := *m
				e.Err = &cp
			}
		case *pgproto3.ReadyForQuery:
			e.Ready = true
			return e
		default:
			e.Messages = append(e.Messages, strings.TrimPrefix(fmt.Sprintf("%T", m), "*pgproto3."))
		}
	}
}

func relayIsConnReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe"))
}

// relayFrame builds a protocol frame of type typ with the given body and a
// correct length.
func relayFrame(typ byte, body []byte) []byte {
	b := []byte{typ}
	b = binary.BigEndian.AppendUint32(b, uint32(4+len(body)))
	return append(b, body...)
}

// relayErrCode returns the SQLSTATE of err when it is a server error, "" otherwise.
func relayErrCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}
