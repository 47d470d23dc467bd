package integration

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgoptimist/pgoptimist/config"
)

// startupCase is what a client sends before it has logged in, and then
// whether it closes its side.
type startupCase struct {
	name      string
	send      []byte
	then      []byte // sent after reading the one-byte answer to send
	closeSend bool   // half-close after sending (a client that gives up)
}

func startupPacket(code uint32, params ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, 0)
	b = binary.BigEndian.AppendUint32(b, code)
	for _, p := range params {
		b = append(append(b, p...), 0)
	}
	if len(params) > 0 {
		b = append(b, 0)
	}
	binary.BigEndian.PutUint32(b, uint32(len(b)))
	return b
}

func startupCases() []startupCase {
	ssl := startupPacket(80877103)
	unterminated := startupPacket(3<<16, "user", "postgres")
	unterminated = unterminated[:len(unterminated)-1]
	binary.BigEndian.PutUint32(unterminated, uint32(len(unterminated)))
	return []startupCase{
		{name: "nothing", closeSend: true},
		{name: "partial length", send: []byte{0, 0}, closeSend: true},
		{name: "length 4", send: []byte{0, 0, 0, 4}},
		{name: "length over 10000", send: []byte{0, 0x10, 0, 0, 0, 3, 0, 0}},
		// node-postgres's connect(); end() back to back.
		{name: "Terminate before StartupMessage", send: []byte{'X', 0, 0, 0, 4}},
		{name: "incomplete packet", send: startupPacket(3<<16, "user", "postgres")[:12], closeSend: true},
		{name: "protocol 2.0", send: startupPacket(2 << 16)},
		{name: "protocol 4.1", send: startupPacket(4<<16 | 1)},
		{name: "SSLRequest with data behind it", send: append(append([]byte{}, ssl...), ssl...)},
		{name: "SSLRequest twice", send: ssl, then: ssl},
		// GSSENCRequest is left out: a server built with GSSAPI answers
		// 'G' and waits for a token, where the proxy answers 'N' (see
		// TestStartupGSSENCRefused).
		{name: "no user", send: startupPacket(3<<16, "database", "postgres")},
		{name: "unterminated parameters", send: unterminated},
	}
}

// startupTranscript sends c's bytes to addr and returns what comes back
// until the connection closes, in words: single answer bytes as they are,
// ErrorResponses as severity, SQLSTATE and message (PostgreSQL's source
// file and line are its own), other messages by type.
func startupTranscript(t *testing.T, addr string, c startupCase) string {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	if len(c.send) > 0 {
		if _, err := conn.Write(c.send); err != nil {
			t.Fatal(err)
		}
	}
	var first []byte
	if c.then != nil {
		first = make([]byte, 1)
		if _, err := io.ReadFull(conn, first); err != nil {
			t.Fatalf("%s: reading the answer: %v", addr, err)
		}
		if _, err := conn.Write(c.then); err != nil {
			t.Fatal(err)
		}
	}
	if c.closeSend {
		_ = conn.(*net.TCPConn).CloseWrite()
	}
	got, err := io.ReadAll(conn)
	got = append(first, got...)
	if err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("%s: reading: %v", addr, err)
	}
	var words []string
	if len(got) > 0 && got[0] == 'E' && bytes.HasSuffix(got, []byte("\n\x00")) && bytes.Count(got, []byte{0}) == 1 {
		// A protocol 2 error, as PostgreSQL sends it to a client that
		// asked for protocol 2: 'E', the text, NUL.
		return fmt.Sprintf("v2 error %q", got[1:])
	}
	for len(got) > 0 {
		if (got[0] == 'N' || got[0] == 'S') && (len(got) < 5 || binary.BigEndian.Uint32(got[1:5]) > 1<<16) {
			words = append(words, fmt.Sprintf("answer %c", got[0]))
			got = got[1:]
			continue
		}
		if len(got) < 5 {
			words = append(words, fmt.Sprintf("trailing %q", got))
			break
		}
		n := int(binary.BigEndian.Uint32(got[1:5])) + 1
		if n > len(got) {
			words = append(words, fmt.Sprintf("truncated %q", got))
			break
		}
		if got[0] == 'E' {
			var e pgproto3.ErrorResponse
			if err := e.Decode(got[5:n]); err != nil {
				t.Fatal(err)
			}
			words = append(words, fmt.Sprintf("%s %s %s", e.Severity, e.Code, e.Message))
		} else {
			words = append(words, fmt.Sprintf("message %c", got[0]))
		}
		got = got[n:]
	}
	if len(words) == 0 {
		return "silent close"
	}
	return strings.Join(words, "; ")
}

// TestStartupAnswersLikePostgres: before a client has logged in, the proxy
// answers exactly as PostgreSQL does, with and without a guarded table:
// silent where the server is silent, the same FATAL where it sends one.
func TestStartupAnswersLikePostgres(t *testing.T) {
	plain := guardedProxy(t)
	guarded := guardedProxy(t, config.Table{Name: "public.address"})
	for _, c := range startupCases() {
		if tlsMatrix && strings.HasPrefix(c.name, "SSLRequest") {
			// Both would answer 'S' and start a handshake: what follows
			// is TLS's business (TestTLSBothLegs), not the startup's.
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			want := startupTranscript(t, pg.Addr(), c)
			for name, p := range map[string]*proxyInstance{"plain": plain, "guarded": guarded} {
				if got := startupTranscript(t, p.Addr, c); got != want {
					t.Errorf("%s proxy answered %q; PostgreSQL answers %q", name, got, want)
				}
			}
		})
	}
}

// TestStartupUnsupportedProtocolOneFatal: the exact bytes a client asking
// for an unsupported protocol receives: one FATAL and nothing else (in
// protocol 2's own format for a protocol 2 client, as PostgreSQL does).
func TestStartupUnsupportedProtocolOneFatal(t *testing.T) {
	p := guardedProxy(t)
	v3, _ := (&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "0A000",
		Message: "unsupported frontend protocol 4.0: server supports 3.0 to 3.0"}).Encode(nil)
	for code, want := range map[uint32][]byte{
		4 << 16: v3,
		2 << 16: []byte("EFATAL:  unsupported frontend protocol 2.0: server supports 3.0 to 3.0\n\x00"),
	} {
		conn, err := net.DialTimeout("tcp", p.Addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := conn.Write(startupPacket(code)); err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(conn)
		conn.Close()
		if !bytes.Equal(got, want) {
			t.Errorf("protocol %d.%d: client received %q\nwant exactly %q", code>>16, code&0xffff, got, want)
		}
	}
}
