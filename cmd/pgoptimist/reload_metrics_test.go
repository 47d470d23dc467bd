package main

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReloadMetrics runs the real binary and reloads it with a broken and
// then a good file: the reload series and the configuration hash follow.
func TestReloadMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildBinary(t)
	good := "listen: 127.0.0.1:0\nupstream:\n  address: 127.0.0.1:1\nmetrics:\n  listen: 127.0.0.1:0\n"
	cfgPath := writeFile(t, "c.yaml", good)
	cmd := exec.Command(bin, "serve", "--config", cfgPath)
	var logs lockedBuffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()

	addrRE := regexp.MustCompile(`msg="metrics listening" listen=(\S+)`)
	var metricsAddr string
	for deadline := time.Now().Add(10 * time.Second); metricsAddr == "" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if m := addrRE.FindStringSubmatch(logs.String()); m != nil {
			metricsAddr = m[1]
		}
	}
	if metricsAddr == "" {
		t.Fatalf("no metrics address in the log:\n%s", logs.String())
	}
	scrape := func() string {
		t.Helper()
		resp, err := http.Get("http://" + metricsAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	hashRE := regexp.MustCompile(`pgoptimist_config_info\{hash="([0-9a-f]+)"\} 1`)
	// waitMetrics scrapes until every line in want is there.
	waitMetrics := func(want ...string) string {
		t.Helper()
		var body string
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			body = scrape()
			ok := true
			for _, w := range want {
				ok = ok && strings.Contains(body, "\n"+w+"\n")
			}
			if ok {
				return body
			}
		}
		t.Fatalf("metrics never showed %q:\n%s\nlog:\n%s", want, body, logs.String())
		return ""
	}

	body := waitMetrics("pgoptimist_config_last_reload_successful 1", `pgoptimist_config_reloads_total{result="failed"} 0`)
	first := hashRE.FindStringSubmatch(body)
	if first == nil {
		t.Fatalf("no config_info at start:\n%s", body)
	}

	if err := os.WriteFile(cfgPath, []byte("listen: [not, a, string\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Process.Signal(syscall.SIGHUP)
	body = waitMetrics("pgoptimist_config_last_reload_successful 0")
	if strings.Contains(body, `pgoptimist_config_reloads_total{result="failed"} 0`+"\n") {
		t.Errorf("failed reload not counted:\n%s", body)
	}
	if h := hashRE.FindStringSubmatch(body); h == nil || h[1] != first[1] {
		t.Errorf("config_info changed after a refused reload: %v, want %s", h, first[1])
	}

	if err := os.WriteFile(cfgPath, []byte(good+"tables:\n  - name: public.address\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Process.Signal(syscall.SIGHUP)
	// The file watcher may have applied the edit before the SIGHUP: wait
	// for the new configuration itself, not only for a good reload.
	body = waitMetrics("pgoptimist_config_last_reload_successful 1", `pgoptimist_stale_conflicts_total{table="public.address"} 0`)
	if strings.Contains(body, `pgoptimist_config_reloads_total{result="ok"} 0`+"\n") {
		t.Errorf("good reload not counted:\n%s", body)
	}
	if h := hashRE.FindStringSubmatch(body); h == nil || h[1] == first[1] {
		t.Errorf("config_info hash %v after a reload with a new table, want a new one (was %s)", h, first[1])
	}
	if !strings.Contains(body, `pgoptimist_stale_conflicts_total{table="public.address"} 0`) {
		t.Errorf("no zero series for the reloaded configuration's table:\n%s", body)
	}
}
