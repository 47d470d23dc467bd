package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgoptimist/pgoptimist/config"
	"golang.org/x/sys/unix"
)

// socketPair returns two connected Unix stream sockets.
func socketPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		conns[i], err = net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	return conns[0], conns[1]
}

// loopSession runs a session on ls over socket pairs and returns the test's
// ends of them and the relay's result.
func loopSession(t testing.TB, srv *Server, guard *sessionGuard) (client, server net.Conn, done <-chan error) {
	t.Helper()
	c1, c2 := socketPair(t)
	s1, s2 := socketPair(t)
	cfg := config.Defaults()
	s := &session{srv: srv, cfg: &cfg, client: c1, server: s1, guard: guard, txStatus: txIdle, guardGen: srv.guards.generation()}
	s.cr = &frameReader{r: bufio.NewReader(c1)}
	s.sr = &frameReader{r: bufio.NewReader(s1)}
	ch := make(chan error, 1)
	go func() { ch <- s.relay() }()
	t.Cleanup(func() { c2.Close(); s2.Close() })
	return c2, s2, ch
}

// TestLoopRecoversSessionPanic: a panic while handling one session's bytes
// ends that session only; another session on the same loop goes on.
func TestLoopRecoversSessionPanic(t *testing.T) {
	ls, err := newLoopSet(1)
	if err != nil {
		t.Fatal(err)
	}
	defer ls.stop()
	srv := testServer()
	srv.loops = ls

	healthyClient, healthyServer, healthyDone := loopSession(t, srv, nil)
	// A guard without a rewriter: the first Query dereferences nil.
	brokenClient, _, brokenDone := loopSession(t, srv, &sessionGuard{})

	query := frames(&pgproto3.Query{String: "SELECT 1"})
	go func() { _, _ = brokenClient.Write(query) }()
	select {
	case err := <-brokenDone:
		if err == nil || !bytes.Contains([]byte(err.Error()), []byte("panic")) {
			t.Fatalf("broken session ended with %v, want the recovered panic", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the panicking session did not end")
	}
	if n := srv.metrics.panics.Load(); n != 1 {
		t.Fatalf("panics metric = %d, want 1", n)
	}

	// The other session still relays both ways.
	go func() { _, _ = healthyClient.Write(query) }()
	got := make([]byte, len(query))
	_ = healthyServer.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(healthyServer, got); err != nil || !bytes.Equal(got, query) {
		t.Fatalf("server side got %q, %v; want %q", got, err, query)
	}
	reply := frames(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	go func() { _, _ = healthyServer.Write(reply) }()
	got = make([]byte, len(reply))
	_ = healthyClient.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(healthyClient, got); err != nil || !bytes.Equal(got, reply) {
		t.Fatalf("client side got %q, %v; want %q", got, err, reply)
	}
	healthyClient.Close()
	select {
	case <-healthyDone:
	case <-time.After(5 * time.Second):
		t.Fatal("session did not end after its client closed")
	}
}

// TestLoopKeepsItsThread: a loop's goroutine runs on one OS thread for its
// whole life, however often it is descheduled (here: by sleeping in a
// posted function, which hands the goroutine to whichever thread runs the
// timer, and by collections), so the kernel keeps its wake-ups on a warm
// CPU (see loop.run).
func TestLoopKeepsItsThread(t *testing.T) {
	ls, err := newLoopSet(1)
	if err != nil {
		t.Fatal(err)
	}
	defer ls.stop()
	l := ls.loops[0]
	var tids []int
	for i := 0; i < 20; i++ {
		done := make(chan struct{})
		l.post(func() {
			tids = append(tids, unix.Gettid())
			time.Sleep(100 * time.Microsecond)
			tids = append(tids, unix.Gettid())
			close(done)
		})
		<-done
		runtime.GC()
	}
	for _, tid := range tids {
		if tid != tids[0] {
			t.Fatalf("the loop ran on threads %v, want one", tids)
		}
	}
}
