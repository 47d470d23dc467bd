package proxy

// buffer is a byte queue: bytes are appended at the end and consumed from
// the front. The relay reads into its spare capacity directly.
type buffer struct {
	b []byte
	r int // start of unconsumed data
}

func (q *buffer) data() []byte { return q.b[q.r:] }
func (q *buffer) len() int     { return len(q.b) - q.r }

func (q *buffer) consume(n int) {
	q.r += n
	if q.r == len(q.b) {
		q.b, q.r = q.b[:0], 0
	}
}

func (q *buffer) append(p ...byte) { q.b = append(q.b, p...) }

// spare returns at least min bytes of free space at the end, compacting or
// growing the buffer as needed; commit(n) then adds n bytes written there.
func (q *buffer) spare(min int) []byte {
	if cap(q.b)-len(q.b) < min && q.r > 0 {
		n := copy(q.b, q.b[q.r:])
		q.b, q.r = q.b[:n], 0
	}
	if cap(q.b)-len(q.b) < min {
		nb := make([]byte, len(q.b), 2*cap(q.b)+min)
		copy(nb, q.b)
		q.b = nb
	}
	return q.b[len(q.b):cap(q.b)]
}

func (q *buffer) commit(n int) { q.b = q.b[:len(q.b)+n] }

// release drops a large backing array once the buffer is empty, so one big
// message does not pin memory for the session's life.
func (q *buffer) release(keep int) {
	if q.len() == 0 && cap(q.b) > keep {
		q.b, q.r = nil, 0
	}
}
