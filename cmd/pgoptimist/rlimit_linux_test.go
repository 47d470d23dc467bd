package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestServeRaisesFileLimit starts the real binary with a soft open file
// limit of 64 under a hard limit of 1500 (prlimit sets both before exec):
// the process must run with soft = hard = 1500, log that figure, and warn
// that 1500 descriptors cannot hold the default 1000 connections.
func TestServeRaisesFileLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skip("prlimit (util-linux) not installed")
	}
	var own syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &own); err != nil {
		t.Fatal(err)
	}
	const soft, hard = 64, 1500
	if own.Max < hard {
		t.Skipf("hard open file limit %d is below %d", own.Max, hard)
	}
	bin := buildBinary(t)
	cfgPath := writeFile(t, "c.yaml", "listen: 127.0.0.1:0\nupstream:\n  address: 127.0.0.1:1\n")
	cmd := exec.Command(prlimit, fmt.Sprintf("--nofile=%d:%d", soft, hard), bin, "serve", "--config", cfgPath)
	logs := &lockedBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(logs.String(), "pgoptimist listening") {
		if time.Now().After(deadline) {
			t.Fatalf("never listening:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}

	out := logs.String()
	if !regexp.MustCompile(`msg="open file limit" soft=1500 hard=1500`).MatchString(out) {
		t.Errorf("no log line with the raised open file limit:\n%s", out)
	}
	if !strings.Contains(out, "open file limit is below what limits.max_connections needs") ||
		!strings.Contains(out, "needs_at_least=2000") {
		t.Errorf("no warning that 1500 descriptors cannot hold 1000 connections:\n%s", out)
	}

	// prlimit execs the binary, so the process we started is the proxy.
	soft2, hard2 := procOpenFiles(t, cmd.Process.Pid)
	if soft2 != "1500" || hard2 != "1500" {
		t.Errorf("/proc/%d/limits: Max open files soft=%s hard=%s, want 1500 1500", cmd.Process.Pid, soft2, hard2)
	}
}

// procOpenFiles reads the "Max open files" line of /proc/PID/limits.
func procOpenFiles(t *testing.T, pid int) (soft, hard string) {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Max open files"); ok {
			fields := strings.Fields(rest)
			if len(fields) >= 2 {
				return fields[0], fields[1]
			}
		}
	}
	t.Fatalf("/proc/%d/limits has no Max open files line", pid)
	return "", ""
}
