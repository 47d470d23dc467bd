package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proxyProc is bin/pgoptimist running as a child process, so that its memory
// is its own in /proc/PID/status.
type proxyProc struct {
	cmd        *exec.Cmd
	configPath string
	logPath    string
	addr       string // client listener, 127.0.0.1:port
	metrics    string // metrics listener, 127.0.0.1:port
	upstream   string
	unguarded  bool // guard nothing (to see the soak catch lost updates)

	logDone chan struct{} // closed when the log reader has seen the end of stderr

	mu           sync.Mutex
	reloads      int            // "configuration reloaded" lines
	reloadErrors []string       // "configuration reload refused" lines
	levels       map[string]int // log lines by level=
	errorMsgs    map[string]int // ERROR and WARN lines by msg=
	panicLines   []string
}

// proxyConfig is the configuration file the soak gives the proxy. The ledger
// is guarded in every version; withAudit adds the audit table, so reloads
// change the policies that new sessions get. unguarded guards no table at
// all, to see the soak fail.
func proxyConfig(listen, metrics, upstream string, withAudit, unguarded bool) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, `# written by the soak (bench/cmd/soak)
listen: %s
upstream:
  address: %s
  tls: disable
shutdown_timeout: 20s
log:
  level: info
metrics:
  listen: %s
`, listen, upstream, metrics)
	if unguarded {
		b.WriteString("tables: []\n")
		return b.Bytes()
	}
	b.WriteString("tables:\n  - name: public.ledger\n    column: version\n    mode: explicit\n")
	if withAudit {
		b.WriteString("  - name: public.audit\n    column: version\n    statements: [update]\n")
	}
	return b.Bytes()
}

// startProxy starts bin, writing its configuration and log into dir, and
// waits until it listens.
func startProxy(ctx context.Context, bin, dir, upstream string, unguarded bool) (*proxyProc, error) {
	listen, err := freeAddr()
	if err != nil {
		return nil, err
	}
	metrics, err := freeAddr()
	if err != nil {
		return nil, err
	}
	p := &proxyProc{
		configPath: filepath.Join(dir, "pgoptimist.yaml"),
		logPath:    filepath.Join(dir, "pgoptimist.log"),
		addr:       listen,
		metrics:    metrics,
		upstream:   upstream,
		unguarded:  unguarded,
		logDone:    make(chan struct{}),
		levels:     map[string]int{},
		errorMsgs:  map[string]int{},
	}
	if err := p.writeConfig(false); err != nil {
		return nil, err
	}
	logFile, err := os.Create(p.logPath)
	if err != nil {
		return nil, err
	}
	p.cmd = exec.Command(bin, "serve", "--config", p.configPath)
	// The proxy must not outlive the soak, whatever ends it.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		logFile.Close()
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	listening := make(chan struct{})
	go p.readLog(stderr, logFile, listening)

	select {
	case <-listening:
		return p, nil
	case <-p.logDone:
		_ = p.cmd.Wait()
		return nil, fmt.Errorf("%s exited before listening; log: %s", bin, p.logPath)
	case <-ctx.Done():
		_ = p.cmd.Process.Kill()
		<-p.logDone
		_ = p.cmd.Wait()
		return nil, fmt.Errorf("%s did not start listening: %w; log: %s", bin, ctx.Err(), p.logPath)
	}
}

// writeConfig replaces the configuration file atomically (rename), as an
// operator's tooling would.
func (p *proxyProc) writeConfig(withAudit bool) error {
	tmp := p.configPath + ".tmp"
	if err := os.WriteFile(tmp, proxyConfig(p.addr, p.metrics, p.upstream, withAudit, p.unguarded), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, p.configPath)
}

// reload rewrites the configuration and sends SIGHUP.
func (p *proxyProc) reload(withAudit bool) error {
	if err := p.writeConfig(withAudit); err != nil {
		return err
	}
	return p.cmd.Process.Signal(syscall.SIGHUP)
}

var (
	levelRe = regexp.MustCompile(`\blevel=(\w+)`)
	msgRe   = regexp.MustCompile(`\bmsg=("(?:[^"\\]|\\.)*"|\S+)`)
)

// readLog copies the proxy's stderr to logFile and counts what the soak
// reports on. It owns logFile and ends at the end of stderr (the process
// exiting); listening is closed at the "pgoptimist listening" line.
func (p *proxyProc) readLog(stderr io.Reader, logFile *os.File, listening chan struct{}) {
	defer close(p.logDone)
	defer logFile.Close()
	sc := bufio.NewScanner(stderr)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	sawListening := false
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(logFile, line)
		level := ""
		if m := levelRe.FindStringSubmatch(line); m != nil {
			level = m[1]
		}
		msg := ""
		if m := msgRe.FindStringSubmatch(line); m != nil {
			msg = strings.Trim(m[1], `"`)
		}
		p.mu.Lock()
		if level != "" {
			p.levels[level]++
		}
		switch {
		case msg == "configuration reloaded":
			p.reloads++
		case strings.HasPrefix(msg, "configuration reload refused"):
			p.reloadErrors = append(p.reloadErrors, line)
		}
		if level == "ERROR" || level == "WARN" {
			p.errorMsgs[level+" "+msg]++
		}
		if strings.Contains(line, "panic") {
			p.panicLines = append(p.panicLines, line)
		}
		p.mu.Unlock()
		if !sawListening && msg == "pgoptimist listening" {
			sawListening = true
			close(listening)
		}
	}
	// Keep draining whatever a too-long line left, so the child never blocks.
	_, _ = io.Copy(logFile, stderr)
}

// stop sends SIGTERM and waits for the process; a process that does not exit
// within timeout is killed and reported.
func (p *proxyProc) stop(timeout time.Duration) error {
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("SIGTERM: %w", err)
	}
	select {
	case <-p.logDone:
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.logDone
		_ = p.cmd.Wait()
		return fmt.Errorf("the proxy did not exit within %s of SIGTERM", timeout)
	}
	if err := p.cmd.Wait(); err != nil {
		return fmt.Errorf("the proxy's exit after SIGTERM: %w", err)
	}
	return nil
}

// kill ends the process without ceremony (the soak is failing or was
// interrupted).
func (p *proxyProc) kill() {
	_ = p.cmd.Process.Kill()
}

// memory reads VmRSS and VmHWM (peak RSS) of the process, in KiB.
func (p *proxyProc) memory() (rssKiB, hwmKiB int64, err error) {
	return procMemory(p.cmd.Process.Pid)
}

func procMemory(pid int) (rssKiB, hwmKiB int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	return parseStatusMemory(b)
}

// parseStatusMemory takes VmRSS and VmHWM out of a /proc/PID/status text.
func parseStatusMemory(status []byte) (rssKiB, hwmKiB int64, err error) {
	found := 0
	for _, line := range strings.Split(string(status), "\n") {
		key, rest, ok := strings.Cut(line, ":")
		if !ok || (key != "VmRSS" && key != "VmHWM") {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, 0, fmt.Errorf("unexpected /proc status line %q", line)
		}
		n, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("unexpected /proc status line %q: %w", line, err)
		}
		if key == "VmRSS" {
			rssKiB = n
		} else {
			hwmKiB = n
		}
		found++
	}
	if found != 2 {
		return 0, 0, errors.New("/proc status has no VmRSS or VmHWM line")
	}
	return rssKiB, hwmKiB, nil
}

// metricValues fetches /metrics and returns the samples whose name (with
// labels) starts with one of the prefixes.
func (p *proxyProc) metricValues(ctx context.Context, prefixes ...string) (map[string]string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.metrics+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	vals := map[string]string{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		for _, pre := range prefixes {
			if strings.HasPrefix(line, pre) {
				vals[line[:i]] = line[i+1:]
			}
		}
	}
	return vals, nil
}

// logSummary returns the counts the soak reports: lines by level, ERROR and
// WARN lines by message (most frequent first), refused reloads and lines
// mentioning a panic.
func (p *proxyProc) logSummary() (levels map[string]int, msgs []string, reloads int, reloadErrors, panics []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	levels = map[string]int{}
	for k, v := range p.levels {
		levels[k] = v
	}
	for k, v := range p.errorMsgs {
		msgs = append(msgs, fmt.Sprintf("%6d  %s", v, k))
	}
	sort.Sort(sort.Reverse(sort.StringSlice(msgs)))
	return levels, msgs, p.reloads, append([]string(nil), p.reloadErrors...), append([]string(nil), p.panicLines...)
}

// freeAddr returns a free TCP address on the loopback interface.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
