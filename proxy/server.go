package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pgoptimist/pgoptimist/config"
)

// Server accepts client connections and relays each to its own upstream
// connection (session mode: one server connection per client connection).
type Server struct {
	log      *slog.Logger
	settings atomic.Pointer[settings]
	guards   *guardRegistry
	metrics  *Metrics
	loops    *loopSet

	mu       sync.Mutex
	ln       net.Listener
	sessions map[*session]struct{}
	closing  bool
	spare    *os.File // a descriptor held in reserve (refuseWithSpare)
	wg       sync.WaitGroup

	active       atomic.Int64
	startupSlots slotCounter // connections that have not finished logging in
	buffered     byteBudget  // whole client messages held beyond the sessions' buffers
	startupLog   logThrottle // sessions that end during startup: a summary, not a flood
	acceptLog    logThrottle
	cancels      sync.Map // string(backend key data) → struct{}: keys of live sessions
}

// New builds a server from a validated configuration.
func New(cfg *config.Config, log *slog.Logger) (*Server, error) {
	s := &Server{
		log:      log,
		metrics:  newMetrics(),
		sessions: make(map[*session]struct{}),
	}
	s.startupLog.interval = 10 * time.Second
	s.acceptLog.interval = 10 * time.Second
	s.guards = newGuardRegistry(log, s.metrics)
	s.metrics.planCache = s.guards.planCacheStats
	loops, err := newLoopSet(defaultLoops())
	if err != nil {
		return nil, err
	}
	s.loops = loops
	if err := s.Reload(cfg); err != nil {
		return nil, err
	}
	return s, nil
}

// Reload applies a new configuration to new sessions and new statements:
// table policies, guard settings, limits and client TLS certificates. The
// listen and upstream addresses of a running server do not change.
func (s *Server) Reload(cfg *config.Config) error {
	var tc *tls.Config
	if cfg.TLS.Mode != "disable" && cfg.TLS.Mode != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
		if err != nil {
			return fmt.Errorf("tls.cert_file/tls.key_file: %w", err)
		}
		tc = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	utc, err := upstreamTLSConfig(cfg)
	if err != nil {
		return err
	}
	s.settings.Store(&settings{cfg: cfg, clientTLS: tc, upstreamTLS: utc})
	s.guards.setConfig(cfg)
	s.metrics.configApplied(cfg)
	return nil
}

// settings is one configuration with what is derived from it once, not
// per connection: the TLS configurations (certificates and CA files read).
type settings struct {
	cfg         *config.Config
	clientTLS   *tls.Config // nil when tls.mode is disable
	upstreamTLS *tls.Config // nil when upstream.tls is disable
}

// Metrics returns the server's metrics.
func (s *Server) Metrics() *Metrics { return s.metrics }

// Listen opens the configured listen address.
func (s *Server) Listen() (net.Listener, error) {
	addr := s.settings.Load().cfg.Listen
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return ln, nil
}

// Serve accepts connections on ln until Shutdown. It returns nil after a
// shutdown and the accept error otherwise.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.ln = ln
	s.mu.Unlock()
	s.takeSpare()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return nil
			}
			if outOfFiles(err) && s.refuseWithSpare(ln) {
				continue
			}
			if retryableAccept(err) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				if ok, suppressed := s.acceptLog.allow(time.Now()); ok {
					s.log.Warn("accept failed; retrying", "err", err, "delay", delay, "similar_lines_suppressed", suppressed)
				}
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		delay = 0
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetNoDelay(true)
		}
		set := s.settings.Load()
		sess := &session{srv: s, client: c, set: set, cfg: set.cfg}
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			c.Close()
			return nil
		}
		s.sessions[sess] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			sess.run()
			s.mu.Lock()
			delete(s.sessions, sess)
			s.mu.Unlock()
		}()
	}
}

// outOfFiles reports an accept that failed for want of a descriptor.
func outOfFiles(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

// refuseWithSpare is the answer to running out of descriptors: the one held
// in reserve (spare) is given up to accept the waiting connection, which is
// told FATAL 53300 at once and closed, and the reserve is taken again. So a
// client is refused at once rather than left waiting in the listen queue,
// and the listener is not stuck retrying. It reports whether a connection
// was taken that way.
func (s *Server) refuseWithSpare(ln net.Listener) bool {
	s.mu.Lock()
	spare := s.spare
	s.spare = nil
	s.mu.Unlock()
	if spare == nil {
		return false
	}
	spare.Close()
	c, err := ln.Accept()
	if err == nil {
		s.metrics.refusedTooMany.Add(1)
		_ = c.SetWriteDeadline(time.Now().Add(time.Second))
		_ = writeFatal(c, sqlstateTooManyConnections, "sorry, too many clients already")
		// Not lingerClose: the accept loop must not wait. What the
		// client sent before the refusal is read if it is there already,
		// so the close does not reset the FATAL away.
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		var sink [1024]byte
		_, _ = c.Read(sink[:])
		c.Close()
		if ok, suppressed := s.acceptLog.allow(time.Now()); ok {
			s.log.Warn("out of file descriptors: a connection was refused with 53300", "similar_lines_suppressed", suppressed)
		}
	}
	s.takeSpare()
	return err == nil
}

// takeSpare holds a descriptor in reserve for refuseWithSpare.
func (s *Server) takeSpare() {
	f, err := os.Open(os.DevNull)
	if err != nil {
		return
	}
	s.mu.Lock()
	s.spare = f
	s.mu.Unlock()
}

// retryableAccept reports accept errors that pass (out of file descriptors,
// a connection aborted before it was accepted).
func retryableAccept(err error) bool {
	var ne net.Error
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ECONNABORTED) || (errors.As(err, &ne) && ne.Timeout())
}

// Ready reports whether the server is accepting connections.
func (s *Server) Ready() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ln != nil && !s.closing
}

// Shutdown stops accepting, lets sessions finish until ctx is done, then
// closes the rest. It returns the number of sessions closed by force.
func (s *Server) Shutdown(ctx context.Context) int {
	s.mu.Lock()
	s.closing = true
	if s.ln != nil {
		s.ln.Close()
	}
	if s.spare != nil {
		s.spare.Close()
		s.spare = nil
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	defer s.loops.stop()
	select {
	case <-done:
		return 0
	case <-ctx.Done():
	}
	s.mu.Lock()
	n := len(s.sessions)
	for sess := range s.sessions {
		sess.closeConns()
	}
	s.mu.Unlock()
	<-done
	return n
}
