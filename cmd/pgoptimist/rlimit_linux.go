package main

import (
	"log/slog"
	"syscall"
)

// descriptorsPerSession is what one proxied session holds open: the client's
// connection and the server's.
const descriptorsPerSession = 2

// raiseFileLimit raises the RLIMIT_NOFILE soft limit to the hard limit and
// logs what the process has, so that an operator sees the real ceiling next
// to limits.max_connections. Go's runtime already raises the soft limit at
// start (since Go 1.19); doing it here as well keeps the guarantee if that
// changes, and is the place where the figure gets logged. A soft limit that
// cannot hold max_connections sessions is a warning, not an error: the
// process still serves as many as it can.
func raiseFileLimit(log *slog.Logger, maxConnections int) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		log.Warn("cannot read the open file limit", "err", err)
		return
	}
	if lim.Cur < lim.Max {
		raised := lim
		raised.Cur = raised.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err != nil {
			log.Warn("cannot raise the open file limit to the hard limit", "soft", lim.Cur, "hard", lim.Max, "err", err)
		} else {
			lim = raised
		}
	}
	log.Info("open file limit", "soft", lim.Cur, "hard", lim.Max)
	if need := uint64(maxConnections) * descriptorsPerSession; lim.Cur < need {
		log.Warn("open file limit is below what limits.max_connections needs; raise the hard limit (ulimit -Hn, LimitNOFILE=)",
			"soft", lim.Cur, "max_connections", maxConnections, "needs_at_least", need)
	}
}
