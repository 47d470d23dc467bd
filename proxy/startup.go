package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pgoptimist/pgoptimist/config"
)

// readStartupPacket reads one length-prefixed startup-phase packet. Like
// PostgreSQL, it closes without a word on a connection that ends early or
// announces an impossible length (a client that sends Terminate before its
// StartupMessage does exactly that).
func readStartupPacket(r io.Reader) ([]byte, error) {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, silent(errors.New("incomplete startup packet"))
		}
		return nil, err
	}
	n := int(int32(binary.BigEndian.Uint32(h[:])))
	if n < 8 || n > maxStartupPacket {
		return nil, silent(protoErrorf("invalid length of startup packet (%d)", n))
	}
	b := make([]byte, n)
	copy(b, h[:])
	if _, err := io.ReadFull(r, b[4:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, silent(errors.New("incomplete startup packet"))
		}
		return nil, err
	}
	return b, nil
}

// startupParams decodes the name/value pairs of a StartupMessage.
func startupParams(pkt []byte) (map[string]string, error) {
	params := make(map[string]string)
	b := pkt[8:]
	for len(b) > 0 && b[0] != 0 {
		k, rest, err := cstring(b)
		if err != nil {
			return nil, protoErrorf("startup packet: %v", err)
		}
		v, rest, err := cstring(rest)
		if err != nil {
			return nil, protoErrorf("startup packet: %v", err)
		}
		params[k] = v
		b = rest
	}
	if len(b) != 1 {
		return nil, protoErrorf("startup packet: missing terminator")
	}
	return params, nil
}

// negotiateClient runs the client's side of the startup phase up to its
// StartupMessage: SSLRequest (TLS when configured), GSSENCRequest (refused)
// and CancelRequest (forwarded; the session then ends). It answers as
// PostgreSQL does: each negotiation once, nothing read ahead of an answer
// (bytes that came with the request were not encrypted), and a protocol
// other than 3.x refused with the server's own FATAL.
func (s *session) negotiateClient() (startup []byte, cancel bool, err error) {
	sslDone, gssDone := false, false
	s.clientIn = bufio.NewReaderSize(s.client, readBufSize)
	for {
		pkt, err := readStartupPacket(s.clientIn)
		if err != nil {
			return nil, false, err
		}
		code := binary.BigEndian.Uint32(pkt[4:8])
		switch {
		case code == codeSSLRequest && !sslDone:
			tc := s.set.clientTLS
			sslDone = true
			answer := byte('N')
			if tc != nil {
				answer = 'S'
			}
			if _, err := s.client.Write([]byte{answer}); err != nil {
				return nil, false, err
			}
			if s.clientIn.Buffered() > 0 {
				return nil, false, fatalf(sqlstateProtocolViolation, "received unencrypted data after SSL request")
			}
			if tc == nil {
				continue
			}
			tconn := tls.Server(newTLSTransport(s.client), tc) // the loop drives it later (tlsloop.go)
			if err := tconn.Handshake(); err != nil {
				return nil, false, silent(fmt.Errorf("client TLS handshake: %w", err))
			}
			s.client = tconn
			s.clientIn = bufio.NewReaderSize(s.client, readBufSize)
			gssDone = true // PostgreSQL takes no GSSENCRequest inside TLS
		case code == codeGSSENCRequest && !gssDone:
			gssDone = true
			if _, err := s.client.Write([]byte{'N'}); err != nil {
				return nil, false, err
			}
			if s.clientIn.Buffered() > 0 {
				return nil, false, fatalf(sqlstateProtocolViolation, "received unencrypted data after GSSAPI encryption request")
			}
		case code == codeCancelRequest:
			s.srv.forwardCancel(s, pkt)
			return nil, true, nil
		case code>>16 == 3:
			if _, isTLS := s.client.(*tls.Conn); s.cfg.TLS.Mode == "require" && !isTLS {
				s.srv.metrics.refusedTLS.Add(1)
				return nil, false, &fatalError{code: sqlstateInvalidAuthSpec, msg: "pgoptimist requires TLS: connect with sslmode=require",
					cause: errors.New("plain client refused: tls.mode is require")}
			}
			return pkt, false, nil
		default:
			return nil, false, &fatalError{code: sqlstateFeatureNotSupported,
				msg:   fmt.Sprintf("unsupported frontend protocol %d.%d: server supports 3.0 to 3.0", code>>16, code&0xffff),
				cause: protoErrorf("unsupported startup code %d", code),
				v2:    code>>16 < 3}
		}
	}
}

// forwardCancel passes a CancelRequest to the upstream server when its key
// belongs to a live session (so it cannot be used to probe the server).
func (srv *Server) forwardCancel(s *session, pkt []byte) {
	key := string(pkt[8:])
	if _, ok := srv.cancels.Load(key); !ok {
		srv.log.Debug("cancel request with an unknown key ignored")
		return
	}
	srv.log.Debug("cancel request forwarded")
	conn, err := srv.dialUpstream(s.set, s.cfg.Limits.StartupTimeout)
	if err != nil {
		srv.log.Warn("forwarding cancel request", "err", err)
		return
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(s.cfg.Limits.StartupTimeout))
	if _, err := conn.Write(pkt); err != nil {
		srv.log.Warn("forwarding cancel request", "err", err)
		return
	}
	srv.metrics.cancels.Add(1)
	// The server closes the connection when done; wait for that so the
	// cancel has been processed before we return.
	_, _ = io.Copy(io.Discard, conn)
}

// upstreamNet returns the network and address to dial for upstream.address:
// host:port, or a Unix socket directory (optionally "dir:port").
func upstreamNet(addr string) (string, string) {
	if strings.HasPrefix(addr, "/") {
		dir, port := addr, "5432"
		if i := strings.LastIndexByte(addr, ':'); i > 0 {
			if _, err := strconv.Atoi(addr[i+1:]); err == nil {
				dir, port = addr[:i], addr[i+1:]
			}
		}
		return "unix", filepath.Join(dir, ".s.PGSQL."+port)
	}
	return "tcp", addr
}

func upstreamTLSConfig(cfg *config.Config) (*tls.Config, error) {
	mode := cfg.Upstream.TLS
	if mode == "disable" || mode == "" {
		return nil, nil
	}
	host, _, err := net.SplitHostPort(cfg.Upstream.Address)
	if err != nil {
		host = "localhost"
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
	if cfg.Upstream.CAFile != "" {
		pem, err := os.ReadFile(cfg.Upstream.CAFile)
		if err != nil {
			return nil, fmt.Errorf("upstream.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("upstream.ca_file: no PEM certificates in %s", cfg.Upstream.CAFile)
		}
		tc.RootCAs = pool
	}
	if mode != "verify-full" {
		// prefer and require encrypt without checking the server's identity,
		// as libpq does; with a CA file, require also verifies the chain.
		tc.InsecureSkipVerify = true
		if mode == "require" && tc.RootCAs != nil {
			roots := tc.RootCAs
			tc.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
				return verifyChain(raw, roots)
			}
		}
	}
	return tc, nil
}

func verifyChain(raw [][]byte, roots *x509.CertPool) error {
	if len(raw) == 0 {
		return errors.New("server sent no certificate")
	}
	certs := make([]*x509.Certificate, len(raw))
	for i, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return err
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter})
	return err
}

// dialUpstream connects to the server and negotiates TLS per upstream.tls.
func (srv *Server) dialUpstream(set *settings, timeout time.Duration) (net.Conn, error) {
	cfg := set.cfg
	network, addr := upstreamNet(cfg.Upstream.Address)
	conn, err := net.DialTimeout(network, addr, timeout)
	if err != nil {
		return nil, err
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	tc := set.upstreamTLS
	if tc == nil || network == "unix" {
		return conn, nil
	}
	_ = conn.SetDeadline(time.Now().Add(timeout))
	req := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 8), codeSSLRequest)
	if _, err := conn.Write(req); err != nil {
		conn.Close()
		return nil, err
	}
	var answer [1]byte
	if _, err := io.ReadFull(conn, answer[:]); err != nil {
		conn.Close()
		return nil, err
	}
	switch answer[0] {
	case 'S':
		t := tls.Client(newTLSTransport(conn), tc) // the loop drives it later (tlsloop.go)
		if err := t.Handshake(); err != nil {
			conn.Close()
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		_ = conn.SetDeadline(time.Time{})
		return t, nil
	case 'N':
		if cfg.Upstream.TLS != "prefer" {
			conn.Close()
			return nil, fmt.Errorf("server does not support TLS (upstream.tls is %s)", cfg.Upstream.TLS)
		}
		_ = conn.SetDeadline(time.Time{})
		return conn, nil
	default:
		conn.Close()
		return nil, fmt.Errorf("unexpected answer %q to SSLRequest", answer[0])
	}
}

// authenticate relays the authentication exchange between client and server
// untouched (trust, cleartext, md5, SCRAM-SHA-256), except that
// SCRAM-SHA-256-PLUS is withdrawn from the offered mechanisms: channel
// binding cannot cross a proxy that terminates TLS. It returns at the
// server's first ReadyForQuery, which it does not relay (the caller does).
func (s *session) authenticate() (ready []byte, err error) {
	for {
		msg, err := s.sr.next()
		if err != nil {
			// The server went away mid-login (a restart, a crash): the
			// client is told, as PostgreSQL's own clients are by the
			// failure, rather than left with a closed connection.
			return nil, &fatalError{code: sqlstateConnectionFailure, msg: "pgoptimist: the database server closed the connection during login",
				cause: fmt.Errorf("reading from server during startup: %w", err)}
		}
		switch serverMsg(msg[0]) {
		case msgAuthentication:
			if len(msg) < headerLen+4 {
				return nil, errors.New("server sent a short authentication request")
			}
			code := binary.BigEndian.Uint32(frameBody(msg))
			if code == authSASL {
				msg = stripChannelBinding(msg)
			}
			if _, err := s.cw.Write(msg); err != nil {
				return nil, err
			}
			switch code {
			case authOK, authSASLFinal: // nothing to answer
				continue
			}
			if err := s.cw.Flush(); err != nil {
				return nil, err
			}
			resp, err := s.cr.next()
			if err != nil {
				return nil, fmt.Errorf("reading client authentication: %w", err)
			}
			if clientMsg(resp[0]) != msgPasswordMessage {
				return nil, &fatalError{code: sqlstateProtocolViolation,
					msg:   fmt.Sprintf("expected password response, got message type %d", resp[0]),
					cause: protoErrorf("expected a password message, got %q", resp[0])}
			}
			if _, err := s.sw.Write(resp); err != nil {
				return nil, err
			}
			if err := s.sw.Flush(); err != nil {
				return nil, err
			}
		case msgBackendKeyData:
			s.cancelKey = string(frameBody(msg))
			s.srv.cancels.Store(s.cancelKey, struct{}{})
			if _, err := s.cw.Write(msg); err != nil {
				return nil, err
			}
		case msgReadyForQuery:
			s.txStatus = readyStatus(msg)
			return append([]byte(nil), msg...), nil
		case msgErrorResponse:
			_, _ = s.cw.Write(msg)
			_ = s.cw.Flush()
			s.srv.metrics.refusedByServer.Add(1)
			return nil, errServerRefused
		default: // ParameterStatus, NoticeResponse, NegotiateProtocolVersion
			if _, err := s.cw.Write(msg); err != nil {
				return nil, err
			}
		}
	}
}

var errServerRefused = errors.New("server refused the connection")

// stripChannelBinding removes SCRAM-SHA-256-PLUS from an AuthenticationSASL.
func stripChannelBinding(msg []byte) []byte {
	var mechs [][]byte
	b := msg[headerLen+4:]
	for len(b) > 0 && b[0] != 0 {
		m, rest, ok := cstringBytes(b)
		if !ok {
			return msg
		}
		if !bytes.Equal(m, []byte("SCRAM-SHA-256-PLUS")) {
			mechs = append(mechs, m)
		}
		b = rest
	}
	body := binary.BigEndian.AppendUint32(nil, authSASL)
	for _, m := range mechs {
		body = append(append(body, m...), 0)
	}
	body = append(body, 0)
	return appendFrame(nil, byte(msgAuthentication), body)
}
