package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgoptimist/pgoptimist/config"
)

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestExampleConfigs keeps the shipped configurations valid.
func TestExampleConfigs(t *testing.T) {
	files, _ := filepath.Glob("../../deploy/examples/*.yaml")
	if len(files) == 0 {
		t.Fatal("no example configurations found")
	}
	for _, f := range files {
		if _, err := config.LoadFile(f); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

func TestRewriteCommand(t *testing.T) {
	cfg := writeFile(t, "c.yaml", "tables:\n  - name: public.address\n  - name: orders\n    type: xmin\n    mode: required\n")
	out, err := run(t, "rewrite", "--config", cfg, "UPDATE address a SET state = 'x' WHERE a.id = 1 AND a.version = 3")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"guarded table public.address", "version = a.version + 1", "checked: zero rows affected raises SQLSTATE VL409 (expected version 3)"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	out, err = run(t, "rewrite", "--config", cfg, "DELETE FROM orders WHERE id = 4")
	if err != nil || !strings.Contains(out, "refused with SQLSTATE VL428") {
		t.Errorf("required mode: %v\n%s", err, out)
	}
	out, err = run(t, "rewrite", "--config", cfg, "SELECT * FROM customers")
	if err != nil || !strings.Contains(out, "forwarded byte for byte") {
		t.Errorf("unguarded: %v\n%s", err, out)
	}
}

// TestBadConfigExitStatus: a bad configuration is refused with status 2
// and a message naming the key.
func TestBadConfigExitStatus(t *testing.T) {
	cfg := writeFile(t, "bad.yaml", "upstream:\n  tls: sometimes\ntables:\n  - name: address\n    mode: trackd\n")
	_, err := run(t, "serve", "--config", cfg)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 2 {
		t.Fatalf("err = %v, want exit status 2", err)
	}
	for _, want := range []string{"upstream.tls", "tables[0].mode"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s: %v", want, err)
		}
	}
}

// TestServeSignals runs the real binary: SIGHUP with a broken file keeps
// the old configuration, SIGTERM exits 0.
func TestServeSignals(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildBinary(t)
	cfgPath := writeFile(t, "c.yaml", "listen: 127.0.0.1:0\nupstream:\n  address: 127.0.0.1:1\n")
	cmd, logs := runServe(t, bin, "serve", "--config", cfgPath)
	waitFor := func(s string) { t.Helper(); waitLog(t, logs, regexp.QuoteMeta(s)) }
	waitFor("pgoptimist listening")
	if err := os.WriteFile(cfgPath, []byte("listen: [not, a, string\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Process.Signal(syscall.SIGHUP)
	waitFor("configuration reload refused")
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
	if !strings.Contains(logs.String(), "stopped") {
		t.Errorf("no orderly stop in the log:\n%s", logs.String())
	}
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// buildBinary builds the command once for the tests that run it.
func buildBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "pgoptimist-bin")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "pgoptimist")
		if out, err := exec.Command("go", "build", "-o", builtBin, ".").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

// TestDemo runs `pgoptimist demo` (what make run runs): the reference
// scenario works through the address it prints, and Ctrl-C stops the
// proxy and the throwaway server.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts PostgreSQL")
	}
	bin := buildBinary(t)
	cmd := exec.Command(bin, "demo", "--config", "../../deploy/examples/demo.yaml", "--listen", "127.0.0.1:0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	addrs := make(chan [2]string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			// "pgoptimist is ready: PostgreSQL at A, the proxy at B guarding ..."
			if m := regexp.MustCompile(`PostgreSQL at (\S+), the proxy at (\S+) `).FindStringSubmatch(sc.Text()); m != nil {
				addrs <- [2]string{m[1], m[2]}
			}
		}
	}()
	var pgAddr, proxyAddr string
	select {
	case a := <-addrs:
		pgAddr, proxyAddr = a[0], a[1]
	case <-time.After(60 * time.Second):
		t.Fatalf("demo never became ready:\n%s", logs.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, "postgres://postgres@"+proxyAddr+"/postgres?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	if tag, err := conn.Exec(ctx, "UPDATE address SET state='NC', county='Guilford' WHERE id=1 AND version=1"); err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("first update: %v %v", tag, err)
	}
	_, err = conn.Exec(ctx, "UPDATE address SET county='Miami-Dade' WHERE id=1 AND version=1")
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "VL409" {
		t.Fatalf("second update: %v, want VL409", err)
	}
	conn.Close(ctx)

	_ = cmd.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("demo exit: %v\n%s", err, logs.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("demo did not stop on Ctrl-C")
	}
	if c, err := net.DialTimeout("tcp", pgAddr, time.Second); err == nil {
		c.Close()
		t.Fatalf("the throwaway PostgreSQL at %s still accepts connections", pgAddr)
	}
}

// runServe starts argv (the built binary, or a command that runs it) with
// its log collected; the process is killed when the test ends.
func runServe(t *testing.T, argv ...string) (*exec.Cmd, *lockedBuffer) {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	logs := &lockedBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd, logs
}

// waitLog waits up to 20 s for the log to match re and returns the match.
func waitLog(t *testing.T, logs *lockedBuffer, re string) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if m := rx.FindStringSubmatch(logs.String()); m != nil {
			return m
		}
	}
	t.Fatalf("log never matched %q:\n%s", re, logs.String())
	return nil
}

// lockedBuffer collects a child's log while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestServeReloadAppliedOnce: an edit of the configuration file followed by
// a SIGHUP is applied once, by the SIGHUP; the file watcher that notices the
// same edit later finds it in force already.
func TestServeReloadAppliedOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildBinary(t)
	base := "listen: 127.0.0.1:0\nupstream:\n  address: 127.0.0.1:1\nlog:\n  level: debug\n"
	cfgPath := writeFile(t, "c.yaml", base)
	cmd, logs := runServe(t, bin, "serve", "--config", cfgPath)
	waitFor := func(s string) { t.Helper(); waitLog(t, logs, regexp.QuoteMeta(s)) }
	waitFor("pgoptimist listening")
	if err := os.WriteFile(cfgPath, []byte(base+"tables:\n  - name: public.address\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Process.Signal(syscall.SIGHUP)
	waitFor("content is in force already")
	if n := strings.Count(logs.String(), "configuration reloaded"); n != 1 {
		t.Errorf("the change was applied %d times:\n%s", n, logs.String())
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	_ = cmd.Wait()
}
