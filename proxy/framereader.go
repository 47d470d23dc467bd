package proxy

import (
	"bufio"
	"io"
)

// frameReader serves the startup phase, before the event loop adopts the
// session: blocking, buffered reads of whole frames.

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

// header returns the next frame's type and total size (type byte
// included) without consuming it.
func (fr *frameReader) header() (byte, int, error) {
	h, err := fr.ensure(headerLen)
	if err != nil {
		return 0, 0, err
	}
	typ, total, _, err := frameHeader(h, fr.maxSize)
	return typ, total, err
}

// next returns the whole next frame (type byte included). The slice is valid
// until the next call.
func (fr *frameReader) next() ([]byte, error) {
	_, total, err := fr.header()
	if err != nil {
		return nil, err
	}
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
