package proxy

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgoptimist/pgoptimist/config"
)

// testTLSConfig is a server configuration with a throwaway self-signed
// certificate.
func testTLSConfig(t testing.TB) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

// handshake runs both sides of a TLS handshake.
func handshake(t testing.TB, a, b *tls.Conn) {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- a.Handshake() }()
	if err := b.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// tlsLoopSession runs a session with TLS on both legs on ls, over socket
// pairs, and returns the test's ends (a TLS client and a TLS server).
func tlsLoopSession(t testing.TB, srv *Server, version uint16) (client, server *tls.Conn, done <-chan error) {
	t.Helper()
	c1, c2 := socketPair(t)
	s1, s2 := socketPair(t)
	t.Cleanup(func() { c2.Close(); s2.Close() })
	serverCfg := testTLSConfig(t)
	serverCfg.MaxVersion = version
	clientCfg := &tls.Config{InsecureSkipVerify: true, MaxVersion: version}
	// As negotiateClient and dialUpstream set them up.
	proxyClientSide := tls.Server(newTLSTransport(c1), serverCfg)
	proxyServerSide := tls.Client(newTLSTransport(s1), clientCfg)
	client, server = tls.Client(c2, clientCfg), tls.Server(s2, serverCfg)
	handshake(t, proxyClientSide, client)
	handshake(t, proxyServerSide, server)
	cfg := config.Defaults()
	s := &session{srv: srv, cfg: &cfg, client: proxyClientSide, server: proxyServerSide, txStatus: 'I'}
	s.cr = &frameReader{r: bufio.NewReader(proxyClientSide)}
	s.sr = &frameReader{r: bufio.NewReader(proxyServerSide)}
	ch := make(chan error, 1)
	go func() { ch <- s.relay() }()
	return client, server, ch
}

// TestLoopTLS: with TLS on both legs the loop relays megabytes both ways at
// once with no goroutine but the session's own, and a client's
// close_notify ends the session: the server gets Terminate, then the
// proxy's close_notify.
func TestLoopTLS(t *testing.T) {
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(version), func(t *testing.T) {
			ls, err := newLoopSet(1)
			if err != nil {
				t.Fatal(err)
			}
			defer ls.stop()
			srv := &Server{log: slog.New(slog.NewTextHandler(io.Discard, nil)), metrics: newMetrics(), loops: ls}
			before := runtime.NumGoroutine()
			client, server, done := tlsLoopSession(t, srv, version)

			payload := make([]byte, 3000)
			var up, down []byte
			for i := 0; len(up) < 4<<20; i++ {
				_, _ = rand.Read(payload)
				up = append(up, frames(&pgproto3.CopyData{Data: payload})...)
				_, _ = rand.Read(payload)
				down = append(down, frames(&pgproto3.CopyData{Data: payload[:i%len(payload)]})...)
			}
			_ = client.SetDeadline(time.Now().Add(30 * time.Second))
			_ = server.SetDeadline(time.Now().Add(30 * time.Second))
			errc := make(chan error, 2)
			go func() { _, err := client.Write(up); errc <- err }()
			go func() { _, err := server.Write(down); errc <- err }()
			gotDown := make(chan []byte, 1)
			go func() {
				b := make([]byte, len(down))
				_, err := io.ReadFull(client, b)
				errc <- err
				gotDown <- b
			}()
			gotUp := make([]byte, len(up))
			if _, err := io.ReadFull(server, gotUp[:1]); err != nil {
				t.Fatal(err)
			}
			// Traffic flows: the session is on the loop. Besides it and
			// this test's three I/O goroutines, nothing runs (a bridge
			// would add two copying goroutines per TLS connection).
			if n := runtime.NumGoroutine() - before; n > 1+3 {
				t.Errorf("%d goroutines for one TLS session and the test's I/O, want at most 4", n)
			}
			if _, err := io.ReadFull(server, gotUp[1:]); err != nil {
				t.Fatal(err)
			}
			for range 3 {
				if err := <-errc; err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Equal(gotUp, up) || !bytes.Equal(<-gotDown, down) {
				t.Fatal("the relayed bytes differ")
			}

			// close_notify from the client, no Terminate.
			if err := client.Close(); err != nil {
				t.Fatal(err)
			}
			rest, err := io.ReadAll(server)
			if err != nil {
				t.Fatalf("server side: %v after %q, want close_notify", err, rest)
			}
			if !bytes.Equal(rest, []byte{'X', 0, 0, 0, 4}) {
				t.Fatalf("server got %q, want Terminate", rest)
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("relay: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the session did not end")
			}
		})
	}
}

// TestLoopTLSTruncated: a client whose connection ends in the middle of a
// record ends its session with an error, not as a clean close.
func TestLoopTLSTruncated(t *testing.T) {
	ls, err := newLoopSet(1)
	if err != nil {
		t.Fatal(err)
	}
	defer ls.stop()
	srv := &Server{log: slog.New(slog.NewTextHandler(io.Discard, nil)), metrics: newMetrics(), loops: ls}
	client, _, done := tlsLoopSession(t, srv, tls.VersionTLS13)
	raw := client.NetConn()
	if _, err := raw.Write([]byte{23, 3, 3, 0x10, 0, 1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	select {
	case err := <-done:
		if err == nil || errors.Is(err, io.EOF) {
			t.Fatalf("relay ended with %v, want the truncation", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the session did not end")
	}
}

// BenchmarkLoopRoundTrip is one small query and its small answer through a
// session on the loop, plain and with TLS on both legs.
func BenchmarkLoopRoundTrip(b *testing.B) {
	for _, withTLS := range []bool{false, true} {
		name := "plain"
		if withTLS {
			name = "tls"
		}
		b.Run(name, func(b *testing.B) {
			ls, err := newLoopSet(1)
			if err != nil {
				b.Fatal(err)
			}
			defer ls.stop()
			srv := &Server{log: slog.New(slog.NewTextHandler(io.Discard, nil)), metrics: newMetrics(), loops: ls}
			var client, server net.Conn
			if withTLS {
				client, server, _ = tlsLoopSession(b, srv, tls.VersionTLS13)
			} else {
				client, server, _ = loopSession(b, srv, nil)
			}
			query := frames(&pgproto3.Query{String: "SELECT abalance FROM pgbench_accounts WHERE aid = 4242"})
			reply := frames(&pgproto3.DataRow{Values: [][]byte{[]byte("0")}}, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
			qbuf, rbuf := make([]byte, len(query)), make([]byte, len(reply))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if _, err := client.Write(query); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(server, qbuf); err != nil {
					b.Fatal(err)
				}
				if _, err := server.Write(reply); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(client, rbuf); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			client.Close()
			server.Close()
		})
	}
}
