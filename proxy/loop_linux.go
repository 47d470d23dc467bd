package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The relay's event loop: one goroutine waits in epoll_wait for every
// session it owns and handles each ready connection with plain read and
// write system calls. Compared with two goroutines per session parked in
// Go's netpoller, it wakes once for many ready connections, never reads
// just to learn that nothing is there, and hands nothing between threads:
// on a small machine shared with the database that is the difference
// between trailing PgBouncer and matching it (see README, Performance).

// loopSet spreads sessions over the loops round-robin.
type loopSet struct {
	loops    []*loop
	n        atomic.Uint64
	stopOnce sync.Once
}

func newLoopSet(count int) (*loopSet, error) {
	ls := &loopSet{}
	for i := 0; i < count; i++ {
		l, err := newLoop()
		if err != nil {
			return nil, err
		}
		l.holdP = runtime.GOMAXPROCS(0) > count
		ls.loops = append(ls.loops, l)
		go l.run()
	}
	return ls, nil
}

// stop ends the loops; their sessions must be gone already.
func (ls *loopSet) stop() {
	ls.stopOnce.Do(func() {
		for _, l := range ls.loops {
			l.post(func() { l.stopped = true })
		}
	})
}

func (ls *loopSet) next() *loop {
	return ls.loops[ls.n.Add(1)%uint64(len(ls.loops))]
}

// defaultLoops is one loop per two CPUs: the other half is left to the
// database and the clients, which on a proxy's host usually share them.
func defaultLoops() int {
	return max(1, runtime.GOMAXPROCS(0)/2)
}

// loop is one event loop. Sessions and their descriptors belong to it; other
// goroutines reach it only through post.
type loop struct {
	epfd   int
	wakefd int // eventfd: wakes epoll_wait for posted work

	mu    sync.Mutex
	posts []func()

	fds     []fdRef // by descriptor number; s == nil when not the loop's
	scratch []func()
	stopped bool
	holdP   bool // hold the P in waits while busy (another P is left), see epollWaitRaw
}

// fdRef maps a descriptor back to its session and side.
type fdRef struct {
	s      *session
	client bool
	tls    *tlsSide // nil on a plain connection
}

func newLoop() (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wakefd)}); err != nil {
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	return &loop{epfd: epfd, wakefd: wakefd}, nil
}

func (l *loop) ref(fd int) fdRef {
	if fd < 0 || fd >= len(l.fds) {
		return fdRef{}
	}
	return l.fds[fd]
}

func (l *loop) setRef(fd int, r fdRef) {
	if fd >= len(l.fds) {
		l.fds = append(l.fds, make([]fdRef, fd+1-len(l.fds)+64)...)
	}
	l.fds[fd] = r
}

// post runs f on the loop's goroutine.
func (l *loop) post(f func()) {
	l.mu.Lock()
	l.posts = append(l.posts, f)
	l.mu.Unlock()
	var one = [8]byte{1}
	_, _ = unix.Write(l.wakefd, one[:])
}

func (l *loop) run() {
	// The loop keeps one OS thread for its whole life. Unlocked, its
	// goroutine changed threads at every preemption (sysmon's, about 100
	// times a second while traffic flows), and a thread new to the loop's
	// work is one the kernel has no wake-up history for: under
	// pgbench -S -c 1 over TLS perf stat counted 7,000 to 56,000 CPU
	// migrations in 5 s against PgBouncer's 17, and every migrated
	// wake-up is a cold one. Locked, the count fell to about 200 and the
	// one-client latency over TLS by 2-9 µs, ahead of PgBouncer's
	// (README, "Runs of 2026-12-05"). The price: a preempted locked
	// goroutine hands its P over and back (two cross-thread wake-ups,
	// about 1 % at 100 a second); the 8-client rows measured level to a
	// few percent behind the unlocked build, depending on the run. When
	// run returns the thread exits with it.
	runtime.LockOSThread()
	events := make([]unix.EpollEvent, 256)
	quiet := false // the last held wait ended with nothing: release the P
	for {
		var n int
		var err error
		if l.holdP && !quiet {
			n, err = epollWaitRaw(l.epfd, events, heldWaitMillis)
			if n == 0 && err == nil {
				quiet = true
				continue
			}
		} else {
			// Events may be ready already: look without entering the
			// scheduler's blocking-syscall path, and wait through it
			// only when there is nothing.
			n, err = epollWaitRaw(l.epfd, events, 0)
			if n == 0 && err == nil {
				n, err = unix.EpollWait(l.epfd, events, -1)
			}
		}
		if err != nil {
			if err == unix.EINTR {
				// A signal, usually the runtime asking this goroutine
				// to stop (sysmon's preemption, the collector's stop
				// of the world): yield to it.
				runtime.Gosched()
				continue
			}
			panic(fmt.Sprintf("epoll_wait: %v", err)) // cannot happen with valid arguments
		}
		quiet = false
		for i := 0; i < n; i++ {
			ev := &events[i]
			if int(ev.Fd) == l.wakefd {
				l.runPosts()
				if l.stopped {
					unix.Close(l.epfd)
					unix.Close(l.wakefd)
					return
				}
				continue
			}
			ref := l.ref(int(ev.Fd))
			if ref.s == nil {
				continue
			}
			l.handle(ref, ev.Events)
		}
	}
}

func (l *loop) runPosts() {
	var buf [8]byte
	_, _ = unix.Read(l.wakefd, buf[:])
	l.mu.Lock()
	l.scratch, l.posts = l.posts, l.scratch[:0]
	l.mu.Unlock()
	for i, f := range l.scratch {
		f()
		l.scratch[i] = nil
	}
}

// adopt takes a session whose startup is done: its connections become
// non-blocking descriptors owned by the loop (TLS ones with their
// crypto/tls state, see tlsloop.go), with whatever the startup phase had
// already buffered.
func (l *loop) adopt(s *session) error {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if s.closed {
		return errShutdown
	}
	cfd, ctls, err := detach(s.client)
	if err != nil {
		return fmt.Errorf("client connection: %w", err)
	}
	sfd, stls, err := detach(s.server)
	if err != nil {
		unix.Close(cfd)
		return fmt.Errorf("server connection: %w", err)
	}
	if n := s.cr.r.Buffered(); n > 0 {
		b, _ := s.cr.r.Peek(n)
		s.cin.append(b...)
	}
	if n := s.sr.r.Buffered(); n > 0 {
		b, _ := s.sr.r.Peek(n)
		s.sin.append(b...)
	}
	s.cr, s.sr, s.cw, s.sw = nil, nil, nil, nil
	s.lp = l
	l.post(func() {
		s.cfd, s.sfd = cfd, sfd
		l.setRef(cfd, fdRef{s: s, client: true, tls: ctls})
		l.setRef(sfd, fdRef{s: s, tls: stls})
		s.cEvents, s.sEvents = unix.EPOLLIN|unix.EPOLLRDHUP, unix.EPOLLIN|unix.EPOLLRDHUP
		err1 := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, cfd, &unix.EpollEvent{Events: s.cEvents, Fd: int32(cfd)})
		err2 := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, sfd, &unix.EpollEvent{Events: s.sEvents, Fd: int32(sfd)})
		if err := errors.Join(err1, err2); err != nil {
			l.closeSession(s, fmt.Errorf("epoll_ctl: %w", err))
			return
		}
		// Bytes buffered during startup (plaintext, or records crypto/tls
		// has not decrypted yet) are handled as if just read.
		if ctls != nil {
			if err := ctls.decrypt(&s.cin); err != nil {
				l.closeSession(s, err)
				return
			}
		}
		if stls != nil {
			if err := stls.decrypt(&s.sin); err != nil {
				l.closeSession(s, err)
				return
			}
		}
		l.handle(fdRef{s: s}, 0)
	})
	return nil
}

// detach turns a connection into a non-blocking descriptor for the loop:
// the socket's descriptor is duplicated and the net.Conn closed (which also
// takes it out of Go's netpoller). A TLS connection keeps its crypto/tls
// state, whose transport switches to the loop's buffers.
func detach(c net.Conn) (int, *tlsSide, error) {
	var ts *tlsSide
	if tc, ok := c.(*tls.Conn); ok {
		t, ok := tc.NetConn().(*tlsTransport)
		if !ok {
			return -1, nil, fmt.Errorf("TLS connection over %T, not a loop transport", tc.NetConn())
		}
		ts = &tlsSide{conn: tc, t: t}
		c = t.Conn
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, nil, fmt.Errorf("%T has no descriptor", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, nil, err
	}
	fd := -1
	var derr error
	if err := raw.Control(func(f uintptr) { fd, derr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, nil, err
	}
	if derr != nil {
		return -1, nil, derr
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, nil, err
	}
	c.Close()
	if ts != nil {
		ts.t.loop = true
	}
	return fd, ts, nil
}

// handle runs one readiness event of one session. A panic ends that
// session only.
func (l *loop) handle(ref fdRef, ev uint32) {
	s := ref.s
	defer func() {
		if r := recover(); r != nil {
			s.srv.metrics.panics.Add(1)
			s.srv.log.Error("session panic recovered", "panic", r, "stack", string(debug.Stack()))
			l.closeSession(s, fmt.Errorf("panic: %v", r))
		}
	}()
	if ev&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR|unix.EPOLLRDHUP) != 0 {
		if ref.client {
			before := s.cin.len()
			err := readSide(s.cfd, ref.tls, &s.cin)
			s.srv.metrics.BytesIn(s.cin.len() - before)
			if err != nil {
				l.closeSession(s, err)
				return
			}
		} else if err := readSide(s.sfd, ref.tls, &s.sin); err != nil {
			// The server closed: deliver what it said (a FATAL, usually).
			s.processServer()
			_ = writeSide(s.cfd, l.ref(s.cfd).tls, &s.cout)
			l.closeSession(s, err)
			return
		}
	}
	if ref.client {
		s.processClient()
	} else {
		s.processServer()
		if !s.checks.holding() {
			s.processClient() // frames held behind a checked statement
		}
	}
	l.flush(s)
}

// epollWaitRaw is epoll_wait entered straight into the kernel
// (RawSyscall), without telling the scheduler, as rawRead and rawWrite on
// the non-blocking descriptors are: the runtime's syscall bookkeeping would
// cost more than the call. With a zero timeout it cannot block. With a
// timeout (heldWaitMillis) the loop's goroutine keeps its P while it
// waits, a held wait. Through unix.EpollWait the runtime counts each wait
// as a blocking system call: sysmon takes the P of every wait longer than
// 20 µs, keeps polling every 20 µs because it keeps finding one to take
// (7-10 % of the proxy's CPU under pgbench -S in perf), and the return has
// to win a P back. A held wait costs none of that. Two things keep it from
// hurting the rest of the process: it is used only while another P is left
// for the accepts, startups and timers (loop.holdP), and after a held wait
// that ended with nothing the loop waits through the scheduler, releasing
// the P, until traffic comes back, so an idle proxy sleeps as before. The
// runtime can still stop the goroutine at any time: its preemption signal
// ends the wait with EINTR and run yields.
func epollWaitRaw(epfd int, events []unix.EpollEvent, msec int) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(msec), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// heldWaitMillis bounds a held wait: a loop that found nothing for this
// long releases its P (run's quiet). Long enough that a loaded loop's waits
// (tens to hundreds of µs between messages) all end with events. It does
// not spare a busy loop sysmon's preemption: to the runtime the goroutine
// is running throughout, so it is signalled every 10 ms either way.
const heldWaitMillis = 5

// rawRead and rawWrite use recvfrom and sendto, which on sockets skip the
// file-position locking of read and write.
func rawRead(fd int, p []byte) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)), 0, 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

func rawWrite(fd int, p []byte) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)), unix.MSG_NOSIGNAL, 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

// readChunk is the least free space a read offers the kernel.
const readChunk = 16 << 10

// readInto reads what is available from fd.
func readInto(fd int, q *buffer) error {
	n, err := rawRead(fd, q.spare(readChunk))
	switch {
	case n > 0:
		q.commit(n)
		return nil
	case n == 0 && err == nil:
		return io.EOF
	case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR):
		return nil
	}
	return err
}

// readSide reads what is available from a connection into q: bytes as
// they come on a plain one, the plaintext of the whole records read so far
// on a TLS one.
func readSide(fd int, ts *tlsSide, q *buffer) error {
	if ts == nil {
		return readInto(fd, q)
	}
	err := readInto(fd, &ts.t.rin)
	if errors.Is(err, io.EOF) {
		ts.t.eof = true // crypto/tls tells a clean end from a truncation
	} else if err != nil {
		return err
	}
	return ts.decrypt(q)
}

// writeSide writes as much of q to a connection as it takes now; on a TLS
// connection q is encrypted first, and what is not written yet waits as
// ciphertext in the transport.
func writeSide(fd int, ts *tlsSide, q *buffer) error {
	if ts == nil {
		return writeOut(fd, q)
	}
	if err := ts.encrypt(q); err != nil {
		return err
	}
	return writeOut(fd, &ts.t.out)
}

// unwritten is what is queued for a connection and not written yet.
func unwritten(ts *tlsSide, q *buffer) int {
	if ts == nil {
		return q.len()
	}
	return q.len() + ts.t.out.len()
}

// writeOut writes as much of q as fd takes now.
func writeOut(fd int, q *buffer) error {
	for q.len() > 0 {
		n, err := rawWrite(fd, q.data())
		if n > 0 {
			q.consume(n)
		}
		if err != nil {
			if errors.Is(err, unix.EAGAIN) {
				return nil
			}
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return err
		}
	}
	q.release(highWater)
	return nil
}

// flush writes the session's pending output, ends it if it is over, and
// sets which events the loop waits for: reading a side stops while the
// output it feeds is backed up (or, for the client, while a checked
// statement holds it and its input is already large), writing is awaited
// only while output is pending.
func (l *loop) flush(s *session) {
	ctls, stls := l.ref(s.cfd).tls, l.ref(s.sfd).tls
	if err := writeSide(s.sfd, stls, &s.sout); err != nil {
		l.closeSession(s, fmt.Errorf("writing to server: %w", err))
		return
	}
	before := s.cout.len()
	err := writeSide(s.cfd, ctls, &s.cout)
	s.srv.metrics.BytesOut(before - s.cout.len())
	if err != nil {
		l.closeSession(s, fmt.Errorf("writing to client: %w", err))
		return
	}
	cPending, sPending := unwritten(ctls, &s.cout), unwritten(stls, &s.sout)
	if s.ending && cPending == 0 && sPending == 0 {
		l.closeSession(s, s.endErr)
		return
	}
	cev := uint32(unix.EPOLLRDHUP)
	if sPending < highWater && s.queue.len() < maxInFlight && (s.cin.len() < highWater || s.cPass > 0 || !s.checks.holding() && s.cin.len() < s.cfg.Limits.MaxMessageBytes+5) && !s.ending {
		cev |= unix.EPOLLIN
	}
	if cPending > 0 {
		cev |= unix.EPOLLOUT
	}
	sev := uint32(unix.EPOLLRDHUP)
	if cPending < highWater && !s.ending {
		sev |= unix.EPOLLIN
	}
	if sPending > 0 {
		sev |= unix.EPOLLOUT
	}
	if cev != s.cEvents {
		s.cEvents = cev
		_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, s.cfd, &unix.EpollEvent{Events: cev, Fd: int32(s.cfd)})
	}
	if sev != s.sEvents {
		s.sEvents = sev
		_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, s.sfd, &unix.EpollEvent{Events: sev, Fd: int32(s.sfd)})
	}
}

func closeNotify(fd int, ts *tlsSide) {
	if ts == nil {
		return
	}
	_ = ts.conn.CloseWrite()
	_ = writeOut(fd, &ts.t.out)
}

// closeSession ends a session: its descriptors leave the loop and are
// closed, and the session's goroutine is released.
func (l *loop) closeSession(s *session, err error) {
	if l.ref(s.cfd).s != s {
		return // never adopted, or already closed
	}
	ctls, stls := l.ref(s.cfd).tls, l.ref(s.sfd).tls
	if errors.Is(err, io.EOF) && !s.ending {
		// The client went away without Terminate: end the server's
		// session politely.
		if l.ref(s.sfd).s == s {
			x := buffer{b: append([]byte(nil), terminateFrame...)}
			_ = writeSide(s.sfd, stls, &x)
		}
	}
	// A TLS connection ends with close_notify, as PostgreSQL's do (sent
	// if the socket takes it now: the loop does not wait for a peer).
	closeNotify(s.cfd, ctls)
	if l.ref(s.sfd).s == s {
		closeNotify(s.sfd, stls)
	}
	for _, fd := range []int{s.cfd, s.sfd} {
		l.setRef(fd, fdRef{})
		_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil)
		unix.Close(fd)
	}
	s.cfd, s.sfd = -1, -1
	s.end(err)
	close(s.relayDone)
}
