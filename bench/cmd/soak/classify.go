package main

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
)

// errKind sorts the errors a soak session meets.
type errKind int

const (
	// kindConflict is the guard doing its job: a stale write (VL409).
	kindConflict errKind = iota
	// kindDisconnect is a connection ended or refused under the session:
	// what a server restart causes (57P01 admin shutdown, 57P03 cannot
	// connect now, class 08 connection exceptions, including the proxy's
	// 08006 for an unreachable server, resets, EOF). Allowed only while the
	// server restarts.
	kindDisconnect
	// kindOther is anything else, which fails the soak.
	kindOther
)

func (k errKind) String() string {
	switch k {
	case kindConflict:
		return "conflict"
	case kindDisconnect:
		return "disconnect"
	}
	return "other"
}

// staleSQLState is the proxy's default SQLSTATE for a stale write.
const staleSQLState = "VL409"

// classify says which kind err is.
func classify(err error) errKind {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code == staleSQLState:
			return kindConflict
		case pe.Code == "57P01", pe.Code == "57P02", pe.Code == "57P03", strings.HasPrefix(pe.Code, "08"):
			return kindDisconnect
		}
		return kindOther
	}
	if pgconn.Timeout(err) || errors.Is(err, context.DeadlineExceeded) {
		// A statement that did not answer in time is a hang, not a restart.
		return kindOther
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, pgconn.ErrConnClosed) {
		return kindDisconnect
	}
	return kindOther
}

// errLabel is a short stable name for counting errors: the SQLSTATE, or the
// underlying cause.
func errLabel(err error) string {
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &pe):
		return pe.Code
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "EOF"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, syscall.EPIPE):
		return "broken pipe"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, net.ErrClosed), errors.Is(err, pgconn.ErrConnClosed):
		return "conn closed"
	case pgconn.Timeout(err), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	return "other"
}
