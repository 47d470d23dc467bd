package proxy

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Startup packet codes (protocol 3.0 and the special requests).
const (
	codeSSLRequest    = 80877103
	codeGSSENCRequest = 80877104
	codeCancelRequest = 80877102
	maxStartupPacket  = 10000 // PostgreSQL's own MAX_STARTUP_PACKET_LENGTH
)

// protocolError is a malformed or hostile message from a client. It ends the
// session with FATAL 08P01.
type protocolError struct{ msg string }

func (e *protocolError) Error() string { return "protocol violation: " + e.msg }

func protoErrorf(format string, args ...any) error {
	return &protocolError{msg: fmt.Sprintf(format, args...)}
}

// frameReader reads protocol frames (type byte, int32 length, body) from a
// buffered reader, flushing the paired writer whenever a read would block, so
// output never waits behind input that has not arrived ("flush when the input
// runs dry").
type frameReader struct {
	r       *bufio.Reader
	flush   *bufio.Writer // flushed before any read that would block; may be nil
	maxSize int
	scratch []byte // reused for messages larger than the read buffer
}

// ensure makes n bytes available in the buffer (n <= buffer size), flushing
// the paired writer first when they are not there yet.
func (fr *frameReader) ensure(n int) ([]byte, error) {
	if fr.r.Buffered() < n && fr.flush != nil && fr.flush.Buffered() > 0 {
		if err := fr.flush.Flush(); err != nil {
			return nil, err
		}
	}
	return fr.r.Peek(n)
}

// header returns the next frame's type and total length (including the
// 4-byte length itself, excluding the type byte) without consuming it.
func (fr *frameReader) header() (byte, int, error) {
	h, err := fr.ensure(5)
	if err != nil {
		return 0, 0, err
	}
	n := int(int32(binary.BigEndian.Uint32(h[1:5])))
	if n < 4 {
		return 0, 0, protoErrorf("message %q has invalid length %d", h[0], n)
	}
	if fr.maxSize > 0 && n > fr.maxSize {
		return 0, 0, protoErrorf("message %q of %d bytes exceeds the limit of %d bytes", h[0], n, fr.maxSize)
	}
	return h[0], n, nil
}

// next returns the whole next frame (type byte included). The slice is valid
// until the next call.
func (fr *frameReader) next() ([]byte, error) {
	_, n, err := fr.header()
	if err != nil {
		return nil, err
	}
	total := n + 1
	if total <= fr.r.Size() {
		b, err := fr.ensure(total)
		if err != nil {
			return nil, err
		}
		_, _ = fr.r.Discard(total)
		return b, nil
	}
	if cap(fr.scratch) < total {
		fr.scratch = make([]byte, total)
	}
	b := fr.scratch[:total]
	if fr.flush != nil {
		if err := fr.flush.Flush(); err != nil {
			return nil, err
		}
	}
	if _, err := io.ReadFull(fr.r, b); err != nil {
		return nil, err
	}
	if cap(fr.scratch) > 1<<20 {
		fr.scratch = nil // do not keep a huge buffer around for the session's life
	}
	return b, nil
}

// errorFields builds an ErrorResponse or NoticeResponse frame.
func encodeError(severity, code, message, detail, hint string) []byte {
	e := &pgproto3.ErrorResponse{
		Severity:            severity,
		SeverityUnlocalized: severity,
		Code:                code,
		Message:             message,
		Detail:              detail,
		Hint:                hint,
	}
	b, _ := e.Encode(nil)
	return b
}

// writeFatal sends a FATAL ErrorResponse straight to a connection (used
// before and outside the relay, where no buffered writer exists yet).
func writeFatal(c net.Conn, code, message string) error {
	_, err := c.Write(encodeError("FATAL", code, message, "", ""))
	return err
}

// cstring splits a NUL-terminated string off the front of b.
func cstring(b []byte) (string, []byte, error) {
	for i, c := range b {
		if c == 0 {
			return string(b[:i]), b[i+1:], nil
		}
	}
	return "", nil, errors.New("missing string terminator")
}

// cstringBytes is cstring without the copy.
func cstringBytes(b []byte) ([]byte, []byte, bool) {
	for i, c := range b {
		if c == 0 {
			return b[:i], b[i+1:], true
		}
	}
	return nil, nil, false
}

// appendMsg appends a frame with the given type and body to dst.
func appendMsg(dst []byte, typ byte, body ...[]byte) []byte {
	n := 4
	for _, b := range body {
		n += len(b)
	}
	dst = append(dst, typ)
	dst = binary.BigEndian.AppendUint32(dst, uint32(n))
	for _, b := range body {
		dst = append(dst, b...)
	}
	return dst
}
