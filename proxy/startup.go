package proxy

import (
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

// readStartupPacket reads one length-prefixed startup-phase packet.
func readStartupPacket(r io.Reader) ([]byte, error) {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	n := int(int32(binary.BigEndian.Uint32(h[:])))
	if n < 8 || n > maxStartupPacket {
		return nil, protoErrorf("invalid startup packet length %d", n)
	}
	b := make([]byte, n)
	copy(b, h[:])
	if _, err := io.ReadFull(r, b[4:]); err != nil {
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
// and CancelRequest (forwarded; the session then ends).
func (s *session) negotiateClient() (startup []byte, cancel bool, err error) {
	tlsDone := false
	for {
		pkt, err := readStartupPacket(s.client)
		if err != nil {
			return nil, false, err
		}
		code := binary.BigEndian.Uint32(pkt[4:8])
		switch {
		case code == codeSSLRequest && len(pkt) == 8:
			tc := s.set.clientTLS
			if tlsDone || tc == nil {
				if _, err := s.client.Write([]byte{'N'}); err != nil {
					return nil, false, err
				}
				continue
			}
			if _, err := s.client.Write([]byte{'S'}); err != nil {
				return nil, false, err
			}
			tconn := tls.Server(newTLSTransport(s.client), tc) // the loop drives it later (tlsloop.go)
			if err := tconn.Handshake(); err != nil {
				return nil, false, fmt.Errorf("client TLS handshake: %w", err)
			}
			s.client = tconn
			tlsDone = true
		case code == codeGSSENCRequest && len(pkt) == 8:
			if _, err := s.client.Write([]byte{'N'}); err != nil {
				return nil, false, err
			}
		case code == codeCancelRequest:
			s.srv.forwardCancel(s, pkt)
			return nil, true, nil
		case code>>16 == 3:
			if s.cfg.TLS.Mode == "require" && !tlsDone {
				_ = writeFatal(s.client, "28000", "pgoptimist requires TLS: connect with sslmode=require")
				return nil, false, errors.New("plain client refused: tls.mode is require")
			}
			return pkt, false, nil
		default:
			_ = writeFatal(s.client, "08P01", fmt.Sprintf("unsupported frontend protocol %d.%d", code>>16, code&0xffff))
			return nil, false, protoErrorf("unsupported startup code %d", code)
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
			return nil, fmt.Errorf("reading from server during startup: %w", err)
		}
		switch msg[0] {
		case 'R':
			if len(msg) < 9 {
				return nil, errors.New("server sent a short authentication request")
			}
			code := binary.BigEndian.Uint32(msg[5:9])
			if code == 10 { // AuthenticationSASL
				msg = stripChannelBinding(msg)
			}
			if _, err := s.cw.Write(msg); err != nil {
				return nil, err
			}
			switch code {
			case 0, 12: // AuthenticationOk, SASLFinal: nothing to answer
				continue
			}
			if err := s.cw.Flush(); err != nil {
				return nil, err
			}
			resp, err := s.cr.next()
			if err != nil {
				return nil, fmt.Errorf("reading client authentication: %w", err)
			}
			if resp[0] != 'p' {
				return nil, protoErrorf("expected a password message, got %q", resp[0])
			}
			if _, err := s.sw.Write(resp); err != nil {
				return nil, err
			}
			if err := s.sw.Flush(); err != nil {
				return nil, err
			}
		case 'K':
			s.cancelKey = string(msg[5:])
			s.srv.cancels.Store(s.cancelKey, struct{}{})
			if _, err := s.cw.Write(msg); err != nil {
				return nil, err
			}
		case 'Z':
			if len(msg) == 6 {
				s.txStatus = msg[5]
			}
			return append([]byte(nil), msg...), nil
		case 'E':
			_, _ = s.cw.Write(msg)
			_ = s.cw.Flush()
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
	b := msg[9:]
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
	body := []byte{0, 0, 0, 10}
	for _, m := range mechs {
		body = append(append(body, m...), 0)
	}
	body = append(body, 0)
	return appendMsg(nil, 'R', body)
}
