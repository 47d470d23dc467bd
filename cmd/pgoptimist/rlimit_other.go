//go:build !linux

package main

import "log/slog"

// raiseFileLimit is a no-op where the relay does not run (it needs Linux).
func raiseFileLimit(*slog.Logger, int) {}
