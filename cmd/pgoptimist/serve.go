package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/pgoptimist/pgoptimist/config"
	"github.com/pgoptimist/pgoptimist/proxy"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func serveCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the proxy",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			return serve(cmd.Context(), cfg, cmd.Flags(), nil)
		},
	}
	config.BindFlags(cmd.Flags())
	return cmd
}

func newLogger(cfg *config.Config) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.Log.Level))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// serve runs the proxy until SIGTERM or SIGINT, then drains sessions for up
// to shutdown_timeout. SIGHUP, or a change of the configuration file,
// reloads the configuration; a bad new one is reported and the old one kept.
// ready, when not nil, receives the listening address.
func serve(ctx context.Context, cfg *config.Config, fs *pflag.FlagSet, ready func(addr string)) error {
	log := newLogger(cfg)
	raiseFileLimit(log, cfg.Limits.MaxConnections)
	srv, err := proxy.New(cfg, log)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	ln, err := srv.Listen()
	if err != nil {
		return err
	}
	// Signals and the file watcher are set up before the process says it
	// listens: a SIGHUP or an edit right after that line is not lost.
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(signals)
	if ctx == nil {
		ctx = context.Background()
	}
	var fileChanged <-chan struct{}
	if path := configPath(fs); path != "" {
		fileChanged = watchFile(ctx, path, 2*time.Second)
	}
	log.Info("pgoptimist listening", "listen", ln.Addr().String(), "upstream", cfg.Upstream.Address, "tables", len(cfg.Tables), "version", version)

	var metricsSrv *http.Server
	if cfg.Metrics.Listen != "" {
		mln, err := net.Listen("tcp", cfg.Metrics.Listen)
		if err != nil {
			ln.Close()
			return fmt.Errorf("metrics.listen %s: %w", cfg.Metrics.Listen, err)
		}
		metricsSrv = &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = metricsSrv.Serve(mln) }()
		log.Info("metrics listening", "listen", mln.Addr().String())
	}

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	if ready != nil {
		ready(ln.Addr().String())
	}

	reload := func(why string) {
		next, err := config.Load(fs)
		if err != nil {
			srv.Metrics().Reloaded(err)
			log.Error("configuration reload refused; keeping the old configuration", "trigger", why, "err", err)
			return
		}
		if why == "file change" && proxy.ConfigHash(next) == proxy.ConfigHash(cfg) {
			// Already in force: a SIGHUP after the edit applied it.
			// (A SIGHUP always reloads: it also re-reads certificates.)
			log.Debug("configuration file changed but its content is in force already", "trigger", why)
			return
		}
		if err := srv.Reload(next); err != nil {
			srv.Metrics().Reloaded(err)
			log.Error("configuration reload refused; keeping the old configuration", "trigger", why, "err", err)
			return
		}
		cfg = next
		srv.Metrics().Reloaded(nil)
		log.Info("configuration reloaded", "trigger", why, "tables", len(next.Tables))
	}
	for {
		select {
		case err := <-serveErr:
			return err
		case <-fileChanged:
			reload("file change")
		case sig := <-signals:
			if sig == syscall.SIGHUP {
				reload("SIGHUP")
				continue
			}
			return shutdown(srv, metricsSrv, cfg.ShutdownTimeout, log, sig.String())
		case <-ctx.Done():
			return shutdown(srv, metricsSrv, cfg.ShutdownTimeout, log, "context done")
		}
	}
}

func shutdown(srv *proxy.Server, metricsSrv *http.Server, timeout time.Duration, log *slog.Logger, why string) error {
	log.Info("shutting down: no new connections; waiting for sessions to finish", "reason", why, "timeout", timeout)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	forced := srv.Shutdown(ctx)
	if metricsSrv != nil {
		_ = metricsSrv.Close()
	}
	if forced > 0 {
		log.Warn("shutdown timeout: sessions closed", "sessions", forced)
	}
	log.Info("stopped")
	return nil
}

func configPath(fs *pflag.FlagSet) string {
	if fs != nil {
		if f := fs.Lookup("config"); f != nil && f.Value.String() != "" {
			return f.Value.String()
		}
	}
	return os.Getenv(config.ConfigEnv)
}

// watchFile reports changes of a file's modification time or size by
// polling, which works the same for editors that replace the file and for
// Kubernetes ConfigMap symlink swaps.
func watchFile(ctx context.Context, path string, every time.Duration) <-chan struct{} {
	ch := make(chan struct{}, 1)
	stat := func() (time.Time, int64) {
		fi, err := os.Stat(path)
		if err != nil {
			return time.Time{}, -1
		}
		return fi.ModTime(), fi.Size()
	}
	mod, size := stat()
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		var done <-chan struct{}
		if ctx != nil {
			done = ctx.Done()
		}
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			m, s := stat()
			if !m.Equal(mod) || s != size {
				mod, size = m, s
				select {
				case ch <- struct{}{}:
				default:
				}
			}
		}
	}()
	return ch
}
