package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"time"
)

// TLS on the event loop.
//
// A TLS connection's records are read, decrypted, encrypted and written by
// the event loop on the connection's own non-blocking descriptor, exactly
// like a plain connection's bytes: no goroutine and no socket pair sit on
// the data path. crypto/tls does the cryptography, over a transport
// (tlsTransport) that the loop feeds with the ciphertext it reads and
// drains of the ciphertext to write.
//
// Why not kernel TLS: kTLS would let the loop use plain recv/send on the
// descriptor after a user-space handshake, but it needs the kernel's "tls"
// upper-layer protocol (CONFIG_TLS), the session keys (crypto/tls exports
// them only through KeyLogWriter) and user-space handling of TLS 1.3
// post-handshake records (NewSessionTicket, KeyUpdate) that arrive as
// control messages. The kernels pgoptimist was measured on do not have it
// (tcp_available_ulp lists only mptcp, CONFIG_TLS is not set), so it could
// neither be measured nor be relied upon; crypto/tls over the loop's
// buffers works on every kernel and, measured, brings TLS sessions level
// with plain ones relative to PgBouncer (see README, Performance).

// errWouldBlock is what the transport answers when the loop has no more
// ciphertext for crypto/tls. It is a temporary net.Error: crypto/tls keeps
// a partly read record and does not make such an error sticky, so the next
// Read, once the loop has read more, goes on where this one stopped.
var errWouldBlock error = wouldBlockError{}

type wouldBlockError struct{}

func (wouldBlockError) Error() string   { return "tls transport: no buffered input" }
func (wouldBlockError) Timeout() bool   { return false }
func (wouldBlockError) Temporary() bool { return true }

const (
	tlsRecordHeader = 5
	// maxTLSPlaintext is the largest plaintext of one record: a Read into
	// at least this much takes a whole record's data at once.
	maxTLSPlaintext = 16 << 10
)

// tlsTransport is the net.Conn under a session's *tls.Conn. During the
// startup phase it passes reads and writes through to the real connection
// (blocking, with its deadlines), which keeps the handshake and the
// authentication exchange simple. When an event loop adopts the session it
// switches to the loop's buffers (toLoop): Read hands out the ciphertext
// the loop read into rin and answers errWouldBlock when there is none,
// Write appends to out, which the loop writes to the descriptor.
//
// Reads never hand crypto/tls bytes beyond the end of the record it is
// reading, so crypto/tls holds nothing but (part of) the current record and
// at switch time every byte not yet decrypted is in rin, where the loop can
// see it.
type tlsTransport struct {
	net.Conn        // the real connection; closed once the loop owns its descriptor
	rin      buffer // ciphertext not yet handed to crypto/tls
	rec      int    // bytes of the current record not yet handed out
	eof      bool   // the peer closed its side: rin is all there is
	out      buffer // ciphertext from crypto/tls for the loop to write
	loop     bool   // adopted by an event loop
}

func newTLSTransport(c net.Conn) *tlsTransport { return &tlsTransport{Conn: c} }

func (t *tlsTransport) Read(p []byte) (int, error) {
	for {
		if t.rec == 0 && t.rin.len() >= tlsRecordHeader {
			h := t.rin.data()
			t.rec = tlsRecordHeader + (int(h[3])<<8 | int(h[4]))
		}
		if n := min(len(p), t.rec, t.rin.len()); n > 0 {
			copy(p, t.rin.data()[:n])
			t.rin.consume(n)
			t.rec -= n
			return n, nil
		}
		if t.eof {
			// A truncated record or header is handed out as it is:
			// crypto/tls reports it (or a clean EOF at a record boundary).
			if n := copy(p, t.rin.data()); n > 0 {
				t.rin.consume(n)
				return n, nil
			}
			return 0, io.EOF
		}
		if t.loop {
			return 0, errWouldBlock
		}
		n, err := t.Conn.Read(t.rin.spare(4 << 10))
		t.rin.commit(n)
		if errors.Is(err, io.EOF) {
			t.eof = true
		} else if err != nil && n == 0 {
			return 0, err
		}
	}
}

func (t *tlsTransport) Write(p []byte) (int, error) {
	if !t.loop {
		return t.Conn.Write(p)
	}
	t.out.append(p...)
	return len(p), nil
}

// Close closes the real connection during startup; afterwards the loop
// owns and closes the descriptor.
func (t *tlsTransport) Close() error {
	if t.loop {
		return nil
	}
	return t.Conn.Close()
}

func (t *tlsTransport) SetDeadline(d time.Time) error {
	if t.loop {
		return nil
	}
	return t.Conn.SetDeadline(d)
}

func (t *tlsTransport) SetReadDeadline(d time.Time) error {
	if t.loop {
		return nil
	}
	return t.Conn.SetReadDeadline(d)
}

func (t *tlsTransport) SetWriteDeadline(d time.Time) error {
	if t.loop {
		return nil
	}
	return t.Conn.SetWriteDeadline(d)
}

// tlsSide is a TLS connection as the event loop drives it.
type tlsSide struct {
	conn *tls.Conn
	t    *tlsTransport
}

// decrypt moves the plaintext of every record the transport holds whole
// into q. Post-handshake messages (TLS 1.3 tickets and key updates) are
// handled by crypto/tls on the way, and any answer they need is queued in
// the transport's output; a renegotiation request is refused with an error
// that ends the session, as PostgreSQL refuses renegotiation.
//
// Each Read takes one whole record's plaintext (the buffer has room for
// the largest), so once the transport has no ciphertext left nothing is
// left to decrypt either: stopping there rather than at errWouldBlock
// saves a call into crypto/tls, and its allocation, per event.
func (ts *tlsSide) decrypt(q *buffer) error {
	for {
		n, err := ts.conn.Read(q.spare(maxTLSPlaintext))
		q.commit(n)
		if err != nil {
			if err == errWouldBlock {
				return nil
			}
			return err
		}
		if ts.t.rin.len() == 0 && !ts.t.eof {
			return nil
		}
	}
}

// encrypt moves the plaintext queued in q into TLS records in the
// transport's output.
func (ts *tlsSide) encrypt(q *buffer) error {
	if q.len() == 0 {
		return nil
	}
	if _, err := ts.conn.Write(q.data()); err != nil {
		return err
	}
	q.consume(q.len())
	q.release(highWater)
	return nil
}
