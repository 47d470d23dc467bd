package proxy

import (
	"sync"
	"sync/atomic"
	"time"
)

// Process-wide limits: connections still logging in, and the budget for
// client messages that must be held whole.

// slotCounter counts holders of a limited resource.
type slotCounter struct{ n atomic.Int64 }

// acquire takes a slot unless limit are taken already.
func (c *slotCounter) acquire(limit int) bool {
	if c.n.Add(1) > int64(limit) {
		c.n.Add(-1)
		return false
	}
	return true
}

func (c *slotCounter) release() { c.n.Add(-1) }

// byteBudget is the process-wide budget for buffered message bytes
// (limits.max_buffered_bytes). A session that must hold a client message
// whole, beyond what its own buffers hold anyway (highWater), reserves the
// message's size first; when the budget cannot grant it, the session ends
// with 53200 instead of the process growing without bound.
type byteBudget struct{ used atomic.Int64 }

// reserve takes n bytes from a budget of limit bytes.
func (b *byteBudget) reserve(n, limit int64) bool {
	if b.used.Add(n) > limit {
		b.used.Add(-n)
		return false
	}
	return true
}

func (b *byteBudget) give(n int64) { b.used.Add(-n) }

// Used is the number of bytes reserved now.
func (b *byteBudget) Used() int64 { return b.used.Load() }

// logThrottle turns a flood of similar log lines (hostile or timed-out
// connections) into the first line and then at most one line per interval,
// each saying how many were left out since the previous one.
type logThrottle struct {
	mu         sync.Mutex
	interval   time.Duration
	next       time.Time
	suppressed int
}

// allow reports whether a line may be logged now, and how many were
// suppressed before it.
func (t *logThrottle) allow(now time.Time) (bool, int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if now.Before(t.next) {
		t.suppressed++
		return false, 0
	}
	n := t.suppressed
	t.suppressed = 0
	t.next = now.Add(t.interval)
	return true, n
}

// BufferedBytes is what the sessions hold of limits.max_buffered_bytes now.
func (s *Server) BufferedBytes() int64 { return s.buffered.Used() }

// StartupConnections is the number of connections still logging in.
func (s *Server) StartupConnections() int64 { return s.startupSlots.n.Load() }
