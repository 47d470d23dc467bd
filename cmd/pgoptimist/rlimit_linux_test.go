package main

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
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
	cmd, logs := runServe(t, prlimit, fmt.Sprintf("--nofile=%d:%d", soft, hard), bin, "serve", "--config", cfgPath)
	waitLog(t, logs, "pgoptimist listening")

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

// TestServeOutOfDescriptors: with every descriptor taken by connections
// that say nothing, a new client is refused at once with FATAL 53300 (the
// proxy gives up the descriptor it holds in reserve to accept and refuse
// it) instead of waiting unanswered in the listen queue.
func TestServeOutOfDescriptors(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skip("prlimit (util-linux) not installed")
	}
	bin := buildBinary(t)
	cfgPath := writeFile(t, "c.yaml", "listen: 127.0.0.1:0\nupstream:\n  address: 127.0.0.1:1\nlimits:\n  startup_timeout: 60s\n  max_startup_connections: 1000\n")
	_, logs := runServe(t, prlimit, "--nofile=48:48", bin, "serve", "--config", cfgPath)
	addr := waitLog(t, logs, `msg="pgoptimist listening" listen=(\S+)`)[1]
	for i := 0; i < 60; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	pkt := []byte{0, 0, 0, 0, 0, 3, 0, 0}
	pkt = append(append(pkt, "user\x00postgres\x00"...), 0)
	binary.BigEndian.PutUint32(pkt, uint32(len(pkt)))
	_, _ = c.Write(pkt)
	got, _ := io.ReadAll(c)
	var e pgproto3.ErrorResponse
	if len(got) < 5 || got[0] != 'E' || e.Decode(got[5:]) != nil || e.Code != "53300" {
		t.Fatalf("a client over the descriptor limit got %q, want FATAL 53300\n%s", got, logs.String())
	}
	waitLog(t, logs, "out of file descriptors")
}
