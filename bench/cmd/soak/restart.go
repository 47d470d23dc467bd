package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgoptimist/pgoptimist/internal/pgtemp"
)

// restartServer restarts the throwaway server in place with
// `pg_ctl restart -m fast`: every backend is terminated (clients see FATAL
// 57P01), the server is down for a moment, then accepts connections again on
// the same port. pgtemp runs the server as the postgres OS user when the
// caller is root, and so does this.
func restartServer(ctx context.Context, srv *pgtemp.Server) error {
	pgCtl, err := pgtemp.FindBin("pg_ctl")
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, pgCtl, "restart", "-m", "fast", "-w", "-t", "60",
		"-D", srv.DataDir, "-l", filepath.Join(srv.DataDir, "server.log"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Dir = srv.DataDir
	cmd.WaitDelay = 5 * time.Second
	var env []string
	for _, kv := range os.Environ() {
		// PGPORT, PGDATA and friends must not override the server's settings.
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup(srv.Superuser)
		if err != nil {
			return fmt.Errorf("restart: OS user %s: %w", srv.Superuser, err)
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil {
			return fmt.Errorf("restart: OS user %s has uid %q gid %q", srv.Superuser, u.Uid, u.Gid)
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		env = append(env, "HOME="+u.HomeDir, "USER="+srv.Superuser, "LOGNAME="+srv.Superuser)
	}
	cmd.Env = env
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("pg_ctl restart: %w\n%s\nserver log:\n%s", err, out.String(), srv.LogTail(2048))
	}
	return nil
}
