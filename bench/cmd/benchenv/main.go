// Command benchenv runs a throwaway PostgreSQL server (internal/pgtemp) for
// bench/bench.sh.
//
//	benchenv [-db bench] [-conf 'line'...]   start a server, print its settings, wait
//	benchenv -freeport                       print a free TCP port on 127.0.0.1 and exit
//
// After start-up it prints shell assignments on stdout, one per line:
//
//	PGPORT=54321
//	PGSOCKET=/tmp/pgtemp-123/sock
//	PGDATADIR=/tmp/pgtemp-123/data
//	READY=1
//
// and keeps the server running until SIGTERM, SIGINT or SIGHUP, or until its
// parent process exits; then it stops the server and removes its files.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/pgoptimist/pgoptimist/internal/pgtemp"
)

type confFlags []string

func (c *confFlags) String() string     { return strings.Join(*c, "; ") }
func (c *confFlags) Set(v string) error { *c = append(*c, v); return nil }

func main() {
	var conf confFlags
	freePort := flag.Bool("freeport", false, "print a free TCP port on 127.0.0.1 and exit")
	port := flag.Int("port", 0, "TCP port (0 = a free one)")
	db := flag.String("db", "", "create this database")
	logPath := flag.String("log", "", "append the server log to this file")
	flag.Var(&conf, "conf", "extra postgresql.conf line (repeatable)")
	sslCert := flag.String("sslcert", "", "with -sslkey: start the server with ssl=on and this certificate")
	sslKey := flag.String("sslkey", "", "the certificate's private key")
	flag.Parse()

	if *freePort {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fatal(err)
		}
		fmt.Println(l.Addr().(*net.TCPAddr).Port)
		l.Close()
		return
	}

	// Catch signals before starting so that an early SIGTERM still cleans up.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)

	opts := pgtemp.Options{Port: *port, Conf: conf, SSLCertFile: *sslCert, SSLKeyFile: *sslKey}
	if *logPath != "" {
		f, err := os.OpenFile(*logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			fatal(err)
		}
		defer f.Close()
		opts.Log = f
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	srv, err := pgtemp.Start(ctx, opts)
	cancel()
	if err != nil {
		fatal(err)
	}
	defer srv.Stop()

	if *db != "" {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := srv.Exec(ctx, fmt.Sprintf(`CREATE DATABASE "%s"`, strings.ReplaceAll(*db, `"`, `""`)))
		cancel()
		if err != nil {
			srv.Stop()
			fatal(err)
		}
	}

	fmt.Printf("PGPORT=%d\nPGSOCKET=%s\nPGDATADIR=%s\nREADY=1\n", srv.Port, srv.SocketDir, srv.DataDir)
	os.Stdout.Sync()

	parent := os.Getppid()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-sigs:
			stop(srv)
			return
		case <-tick.C:
			if os.Getppid() != parent {
				stop(srv)
				return
			}
		}
	}
}

func stop(srv *pgtemp.Server) {
	if err := srv.Stop(); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "benchenv:", err)
	os.Exit(1)
}
