// Package deploy holds no code: its tests check the deployment files next
// to them (Kubernetes manifests, systemd unit, Dockerfile, Grafana
// dashboard, Prometheus rules) against what the proxy really does.
package deploy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgoptimist/pgoptimist/config"
	"github.com/pgoptimist/pgoptimist/proxy"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"
)

// The Kubernetes objects below declare exactly the fields the manifests
// may use: decoding with KnownFields rejects anything else, so a
// misspelt key (readOnlyRootFileSystem) fails the test instead of being
// ignored by the cluster.

type objectMeta struct {
	Name        string            `yaml:"name"`
	Namespace   string            `yaml:"namespace"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

type typeMeta struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
}

type configMap struct {
	typeMeta `yaml:",inline"`
	Metadata objectMeta        `yaml:"metadata"`
	Data     map[string]string `yaml:"data"`
}

type labelSelector struct {
	MatchLabels map[string]string `yaml:"matchLabels"`
}

type deployment struct {
	typeMeta `yaml:",inline"`
	Metadata objectMeta `yaml:"metadata"`
	Spec     struct {
		Replicas int           `yaml:"replicas"`
		Selector labelSelector `yaml:"selector"`
		Strategy struct {
			Type          string `yaml:"type"`
			RollingUpdate struct {
				MaxUnavailable any `yaml:"maxUnavailable"`
				MaxSurge       any `yaml:"maxSurge"`
			} `yaml:"rollingUpdate"`
		} `yaml:"strategy"`
		Template struct {
			Metadata objectMeta `yaml:"metadata"`
			Spec     podSpec    `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type podSpec struct {
	TerminationGracePeriodSeconds *int  `yaml:"terminationGracePeriodSeconds"`
	AutomountServiceAccountToken  *bool `yaml:"automountServiceAccountToken"`
	SecurityContext               struct {
		RunAsNonRoot   *bool `yaml:"runAsNonRoot"`
		RunAsUser      *int  `yaml:"runAsUser"`
		RunAsGroup     *int  `yaml:"runAsGroup"`
		SeccompProfile struct {
			Type string `yaml:"type"`
		} `yaml:"seccompProfile"`
	} `yaml:"securityContext"`
	TopologySpreadConstraints []struct {
		MaxSkew           int           `yaml:"maxSkew"`
		TopologyKey       string        `yaml:"topologyKey"`
		WhenUnsatisfiable string        `yaml:"whenUnsatisfiable"`
		LabelSelector     labelSelector `yaml:"labelSelector"`
	} `yaml:"topologySpreadConstraints"`
	Containers []container `yaml:"containers"`
	Volumes    []struct {
		Name      string `yaml:"name"`
		ConfigMap struct {
			Name string `yaml:"name"`
		} `yaml:"configMap"`
	} `yaml:"volumes"`
}

type probe struct {
	HTTPGet struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
	PeriodSeconds    int `yaml:"periodSeconds"`
	FailureThreshold int `yaml:"failureThreshold"`
}

type container struct {
	Name            string   `yaml:"name"`
	Image           string   `yaml:"image"`
	ImagePullPolicy string   `yaml:"imagePullPolicy"`
	Args            []string `yaml:"args"`
	Ports           []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
		Protocol      string `yaml:"protocol"`
	} `yaml:"ports"`
	ReadinessProbe *probe `yaml:"readinessProbe"`
	LivenessProbe  *probe `yaml:"livenessProbe"`
	Lifecycle      struct {
		PreStop struct {
			Exec struct {
				Command []string `yaml:"command"`
			} `yaml:"exec"`
		} `yaml:"preStop"`
	} `yaml:"lifecycle"`
	Resources struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext struct {
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
		ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
		Privileged               *bool `yaml:"privileged"`
		Capabilities             struct {
			Drop []string `yaml:"drop"`
		} `yaml:"capabilities"`
	} `yaml:"securityContext"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		ReadOnly  bool   `yaml:"readOnly"`
	} `yaml:"volumeMounts"`
}

func (c container) port(name string) int {
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	return 0
}

type podDisruptionBudget struct {
	typeMeta `yaml:",inline"`
	Metadata objectMeta `yaml:"metadata"`
	Spec     struct {
		MaxUnavailable any           `yaml:"maxUnavailable"`
		MinAvailable   any           `yaml:"minAvailable"`
		Selector       labelSelector `yaml:"selector"`
	} `yaml:"spec"`
}

type service struct {
	typeMeta `yaml:",inline"`
	Metadata objectMeta `yaml:"metadata"`
	Spec     struct {
		Selector map[string]string `yaml:"selector"`
		Ports    []struct {
			Name       string `yaml:"name"`
			Port       int    `yaml:"port"`
			TargetPort any    `yaml:"targetPort"`
			Protocol   string `yaml:"protocol"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

// decodeStrict decodes one YAML document into out, rejecting unknown keys.
func decodeStrict(node *yaml.Node, out any) error {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	if err := enc.Encode(node); err != nil {
		return err
	}
	dec := yaml.NewDecoder(&buf)
	dec.KnownFields(true)
	return dec.Decode(out)
}

type manifests struct {
	configMaps  []configMap
	deployments []deployment
	pdbs        []podDisruptionBudget
	services    []service
}

func loadManifests(t *testing.T, path string) manifests {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m manifests
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for i := 0; ; i++ {
		var node yaml.Node
		if err := dec.Decode(&node); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("%s: document %d: %v", path, i, err)
		}
		var tm typeMeta
		if err := node.Decode(&tm); err != nil {
			t.Fatalf("%s: document %d: %v", path, i, err)
		}
		var err error
		switch tm.APIVersion + " " + tm.Kind {
		case "v1 ConfigMap":
			var o configMap
			err = decodeStrict(&node, &o)
			m.configMaps = append(m.configMaps, o)
		case "apps/v1 Deployment":
			var o deployment
			err = decodeStrict(&node, &o)
			m.deployments = append(m.deployments, o)
		case "policy/v1 PodDisruptionBudget":
			var o podDisruptionBudget
			err = decodeStrict(&node, &o)
			m.pdbs = append(m.pdbs, o)
		case "v1 Service":
			var o service
			err = decodeStrict(&node, &o)
			m.services = append(m.services, o)
		default:
			t.Fatalf("%s: document %d: unexpected %s %s (teach this test its fields)", path, i, tm.APIVersion, tm.Kind)
		}
		if err != nil {
			t.Fatalf("%s: document %d (%s): %v", path, i, tm.Kind, err)
		}
	}
	return m
}

func isTrue(b *bool) bool  { return b != nil && *b }
func isFalse(b *bool) bool { return b != nil && !*b }

func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// TestKubernetesManifests decodes every manifest strictly and checks what
// a reviewer would: the drain fits in the grace period, the pod cannot
// gain privileges, has limits, a PodDisruptionBudget and a named metrics
// port that the configuration really serves.
func TestKubernetesManifests(t *testing.T) {
	files, _ := filepath.Glob("kubernetes/*.yaml")
	if len(files) == 0 {
		t.Fatal("no manifests in kubernetes/")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			m := loadManifests(t, f)
			if len(m.deployments) != 1 || len(m.configMaps) != 1 {
				t.Fatalf("want one Deployment and one ConfigMap, got %d and %d", len(m.deployments), len(m.configMaps))
			}
			d := m.deployments[0]
			pod := d.Spec.Template.Spec
			podLabels := d.Spec.Template.Metadata.Labels
			if !selects(d.Spec.Selector.MatchLabels, podLabels) {
				t.Errorf("the Deployment's selector %v does not select its pods %v", d.Spec.Selector.MatchLabels, podLabels)
			}

			// The configuration the pods run, from the ConfigMap they mount.
			cm := m.configMaps[0]
			if len(pod.Volumes) != 1 || pod.Volumes[0].ConfigMap.Name != cm.Metadata.Name {
				t.Fatalf("the pod does not mount ConfigMap %s", cm.Metadata.Name)
			}
			cfgPath := filepath.Join(t.TempDir(), "pgoptimist.yaml")
			if err := os.WriteFile(cfgPath, []byte(cm.Data["pgoptimist.yaml"]), 0o600); err != nil {
				t.Fatal(err)
			}
			t.Setenv(config.ConfigEnv, "")
			cfg, err := config.LoadFile(cfgPath)
			if err != nil {
				t.Fatalf("the ConfigMap's configuration: %v", err)
			}

			if len(pod.Containers) != 1 {
				t.Fatalf("want one container, got %d", len(pod.Containers))
			}
			c := pod.Containers[0]

			// Drain: preStop sleep, then SIGTERM and shutdown_timeout, all
			// inside the grace period.
			cmd := c.Lifecycle.PreStop.Exec.Command
			if len(cmd) != 2 || cmd[0] != "/bin/sleep" {
				t.Fatalf("preStop is %q, want [/bin/sleep N]", cmd)
			}
			sleep, err := strconv.Atoi(cmd[1])
			if err != nil || sleep < 1 {
				t.Fatalf("preStop sleep %q: want a positive number of seconds", cmd[1])
			}
			if pod.TerminationGracePeriodSeconds == nil {
				t.Fatal("terminationGracePeriodSeconds not set (default 30s is no more than the default shutdown_timeout)")
			}
			need := time.Duration(sleep)*time.Second + cfg.ShutdownTimeout + 5*time.Second
			if grace := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second; grace < need {
				t.Errorf("terminationGracePeriodSeconds %s < preStop %ds + shutdown_timeout %s + 5s: Kubernetes would kill draining sessions", grace, sleep, cfg.ShutdownTimeout)
			}

			// Privileges.
			psc := pod.SecurityContext
			if !isTrue(psc.RunAsNonRoot) || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
				t.Errorf("pod securityContext must set runAsNonRoot: true and a non-zero runAsUser")
			}
			if psc.SeccompProfile.Type != "RuntimeDefault" {
				t.Errorf("pod seccompProfile %q, want RuntimeDefault", psc.SeccompProfile.Type)
			}
			csc := c.SecurityContext
			if !isFalse(csc.AllowPrivilegeEscalation) {
				t.Error("container securityContext.allowPrivilegeEscalation must be false")
			}
			if !isTrue(csc.ReadOnlyRootFilesystem) {
				t.Error("container securityContext.readOnlyRootFilesystem must be true")
			}
			if csc.Privileged != nil && *csc.Privileged {
				t.Error("container must not be privileged")
			}
			if !slices.Contains(csc.Capabilities.Drop, "ALL") {
				t.Error("container must drop ALL capabilities")
			}
			if !isFalse(pod.AutomountServiceAccountToken) {
				t.Error("automountServiceAccountToken must be false: the proxy does not talk to the API server")
			}

			// Resources.
			for _, r := range []string{"cpu", "memory"} {
				if c.Resources.Requests[r] == "" || c.Resources.Limits[r] == "" {
					t.Errorf("resources: %s needs a request and a limit (requests %v, limits %v)", r, c.Resources.Requests, c.Resources.Limits)
				}
			}

			// Ports: the named ports are the ones the configuration serves.
			_, listenPort, _ := net.SplitHostPort(cfg.Listen)
			_, metricsPort, _ := net.SplitHostPort(cfg.Metrics.Listen)
			if strconv.Itoa(c.port("postgres")) != listenPort {
				t.Errorf("container port postgres is %d, the configuration listens on %s", c.port("postgres"), cfg.Listen)
			}
			if metricsPort == "" || strconv.Itoa(c.port("metrics")) != metricsPort {
				t.Errorf("container port metrics is %d, metrics.listen is %q", c.port("metrics"), cfg.Metrics.Listen)
			}
			if a := d.Spec.Template.Metadata.Annotations; a["prometheus.io/scrape"] != "true" || a["prometheus.io/port"] != metricsPort {
				t.Errorf("scrape annotations %v do not point at the metrics port %s", a, metricsPort)
			}
			for name, p := range map[string]*probe{"readinessProbe": c.ReadinessProbe, "livenessProbe": c.LivenessProbe} {
				want := map[string]string{"readinessProbe": "/readyz", "livenessProbe": "/healthz"}[name]
				if p == nil || p.HTTPGet.Path != want || p.HTTPGet.Port != "metrics" {
					t.Errorf("%s must GET %s on port metrics", name, want)
				}
			}

			// PodDisruptionBudget: covers the pods, lets one go at a time.
			if len(m.pdbs) != 1 {
				t.Fatalf("want one PodDisruptionBudget, got %d", len(m.pdbs))
			}
			pdb := m.pdbs[0]
			if !selects(pdb.Spec.Selector.MatchLabels, podLabels) {
				t.Errorf("the PodDisruptionBudget does not select the pods")
			}
			if (pdb.Spec.MaxUnavailable == nil) == (pdb.Spec.MinAvailable == nil) {
				t.Errorf("the PodDisruptionBudget must set exactly one of maxUnavailable, minAvailable")
			}
			if mu, ok := pdb.Spec.MaxUnavailable.(int); ok && (mu < 1 || mu >= d.Spec.Replicas) {
				t.Errorf("maxUnavailable %d with %d replicas: nodes could not drain, or every pod could go", mu, d.Spec.Replicas)
			}
			if d.Spec.Replicas < 2 {
				t.Errorf("replicas %d: a PodDisruptionBudget keeps nothing up with one replica", d.Spec.Replicas)
			}

			// Services: select the pods, target named ports that exist.
			var sawMetrics bool
			for _, s := range m.services {
				if !selects(s.Spec.Selector, podLabels) {
					t.Errorf("Service %s does not select the pods", s.Metadata.Name)
				}
				for _, p := range s.Spec.Ports {
					name, ok := p.TargetPort.(string)
					if !ok || c.port(name) == 0 {
						t.Errorf("Service %s port %s targets %v, not a named container port", s.Metadata.Name, p.Name, p.TargetPort)
					}
					sawMetrics = sawMetrics || p.Name == "metrics"
				}
			}
			if !sawMetrics {
				t.Error("no Service exposes the port named metrics (for a ServiceMonitor)")
			}
		})
	}
}

// TestKubernetesStrictDecodingCatchesTypos: the strict decoding above does
// fail on a misspelt key.
func TestKubernetesStrictDecodingCatchesTypos(t *testing.T) {
	data, err := os.ReadFile("kubernetes/pgoptimist.yaml")
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(data), "readOnlyRootFilesystem", "readOnlyRootFileSystem", 1)
	var node yaml.Node
	dec := yaml.NewDecoder(strings.NewReader(bad))
	for {
		if err := dec.Decode(&node); err != nil {
			t.Fatalf("no Deployment found: %v", err)
		}
		var tm typeMeta
		_ = node.Decode(&tm)
		if tm.Kind == "Deployment" {
			break
		}
	}
	var d deployment
	if err := decodeStrict(&node, &d); err == nil || !strings.Contains(err.Error(), "readOnlyRootFileSystem") {
		t.Fatalf("misspelt key accepted: %v", err)
	}
}

// unitFile parses a systemd unit: section -> key -> values (in order).
func unitFile(t *testing.T, path string) map[string]map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			out[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s: bad line %q", path, line)
			}
			out[section][k] = append(out[section][k], v)
		}
	}
	return out
}

// TestSystemdUnit: reload by SIGHUP, a stop timeout longer than the drain,
// a non-root user and the hardening options; systemd-analyze verify (when
// installed) reports nothing, not even an unknown key.
func TestSystemdUnit(t *testing.T) {
	const path = "systemd/pgoptimist.service"
	u := unitFile(t, path)
	svc := u["Service"]
	one := func(k string) string {
		if len(svc[k]) != 1 {
			t.Errorf("[Service] %s: %q, want one value", k, svc[k])
			return ""
		}
		return svc[k][0]
	}
	if r := one("ExecReload"); !strings.Contains(r, "kill -HUP $MAINPID") {
		t.Errorf("ExecReload %q does not send SIGHUP to the proxy", r)
	}
	if u := one("User"); u == "" || u == "root" {
		t.Errorf("User %q: must be a dedicated unprivileged user", u)
	}
	stop, err := time.ParseDuration(strings.TrimSuffix(one("TimeoutStopSec"), "s") + "s")
	if err != nil || stop <= config.Defaults().ShutdownTimeout {
		t.Errorf("TimeoutStopSec %v must exceed the default shutdown_timeout %s", svc["TimeoutStopSec"], config.Defaults().ShutdownTimeout)
	}
	for k, want := range map[string]string{
		"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
		"PrivateDevices": "yes", "CapabilityBoundingSet": "", "RestrictSUIDSGID": "yes", "MemoryDenyWriteExecute": "yes",
		"ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectControlGroups": "yes", "KillSignal": "SIGTERM",
	} {
		if got := one(k); got != want {
			t.Errorf("[Service] %s=%q, want %q", k, got, want)
		}
	}
	if !strings.HasPrefix(one("ExecStart"), "/usr/local/bin/pgoptimist serve --config ") {
		t.Errorf("ExecStart %q", svc["ExecStart"])
	}

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed: unit not verified by systemd")
	}
	// verify wants the executables to exist: point them at this test binary.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	copyPath := filepath.Join(t.TempDir(), "pgoptimist.service")
	if err := os.WriteFile(copyPath, bytes.ReplaceAll(data, []byte("/usr/local/bin/pgoptimist"), []byte(self)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", copyPath).CombinedOutput()
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "pgoptimist.service") {
			lines = append(lines, l)
		}
	}
	if err != nil || len(lines) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestDockerfile: the runtime stage runs as a non-root numeric user, the
// binary is linked statically and the entry point is in exec form.
func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var stages [][]string // instructions per stage
	for _, line := range strings.Split(strings.ReplaceAll(string(data), "\\\n", " "), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(strings.ToUpper(line), "FROM ") {
			stages = append(stages, nil)
		}
		if len(stages) == 0 {
			t.Fatalf("instruction before FROM: %q", line)
		}
		stages[len(stages)-1] = append(stages[len(stages)-1], line)
	}
	if len(stages) < 2 {
		t.Fatal("want a build stage and a runtime stage")
	}
	final := stages[len(stages)-1]
	var user, entry string
	for _, ins := range final {
		switch {
		case strings.HasPrefix(ins, "USER "):
			user = strings.TrimSpace(ins[5:])
		case strings.HasPrefix(ins, "ENTRYPOINT "):
			entry = strings.TrimSpace(ins[11:])
		case strings.HasPrefix(ins, "ADD "):
			t.Errorf("runtime stage uses ADD (%q): COPY is explicit", ins)
		}
	}
	uid, _, _ := strings.Cut(user, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		t.Errorf("runtime USER %q: want a numeric non-root UID (so runAsNonRoot can check it)", user)
	}
	if !strings.HasPrefix(entry, "[") {
		t.Errorf("ENTRYPOINT %q: want exec form, so SIGTERM reaches the proxy", entry)
	}
	build := strings.Join(stages[0], "\n")
	for _, want := range []string{"-extldflags -static", "netgo", "osusergo", "CGO_ENABLED=1"} {
		if !strings.Contains(build, want) {
			t.Errorf("build stage lacks %q (static binary)", want)
		}
	}
	// The Kubernetes preStop hook needs /bin/sleep in the image.
	if !strings.Contains(final[0], "debian") {
		t.Errorf("runtime stage %q: the preStop hook runs /bin/sleep; keep an image that has it", final[0])
	}
}

// seriesRE finds the metric names a PromQL expression reads.
var seriesRE = regexp.MustCompile(`\b((?:pgoptimist|go|process)_[a-zA-Z0-9_]+)\b`)

// dashboardExprs returns every "expr" in the dashboard JSON.
func dashboardExprs(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var exprs []string
	var walk func(any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				if s, ok := e.(string); ok && (k == "expr" || k == "definition") {
					exprs = append(exprs, s)
				}
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(doc)
	return exprs
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func ruleExprs(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&rf); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var exprs []string
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Labels["severity"] == "" {
				t.Errorf("%s: rule %s has no severity label", path, r.Alert)
			}
			exprs = append(exprs, r.Expr)
		}
	}
	return exprs
}

// scrape runs a proxy in this process, serving its metrics over HTTP as
// serve does, and returns the metric families /metrics exposes.
func scrape(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	cfg := config.Defaults()
	cfg.Listen = "127.0.0.1:0"
	cfg.Upstream.TLS = "disable"
	cfg.Tables = []config.Table{{Name: "public.address"}}
	cfg.Normalize()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	srv, err := proxy.New(&cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := srv.Listen()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	mln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(mln) }()
	t.Cleanup(func() {
		_ = hs.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	})

	resp, err := http.Get("http://" + mln.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics is not the text format: %v", err)
	}
	return fams
}

// seriesNames are the names a scrape answers to: the families, and for
// histograms and summaries their _bucket, _sum and _count series.
func seriesNames(fams map[string]*dto.MetricFamily) map[string]bool {
	out := map[string]bool{}
	for name, f := range fams {
		out[name] = true
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM:
			out[name+"_bucket"], out[name+"_sum"], out[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			out[name+"_sum"], out[name+"_count"] = true, true
		}
	}
	return out
}

// TestDashboardAndAlertSeriesExist scrapes a running proxy and checks that
// every series the Grafana dashboard and the alert rules query exists, so
// neither silently shows nothing after a metric is renamed.
func TestDashboardAndAlertSeriesExist(t *testing.T) {
	names := seriesNames(scrape(t))
	sources := map[string][]string{
		"grafana/pgoptimist.json": dashboardExprs(t, "grafana/pgoptimist.json"),
		"prometheus/alerts.yaml":  ruleExprs(t, "prometheus/alerts.yaml"),
	}
	for src, exprs := range sources {
		if len(exprs) < 5 {
			t.Fatalf("%s: only %d expressions found", src, len(exprs))
		}
		used := map[string]bool{}
		for _, e := range exprs {
			for _, m := range seriesRE.FindAllStringSubmatch(e, -1) {
				used[m[1]] = true
			}
		}
		for name := range used {
			if !names[name] {
				t.Errorf("%s queries %s, which the proxy does not expose", src, name)
			}
		}
		t.Logf("%s: %d expressions, %d series, all exposed", src, len(exprs), len(used))
	}
	// What the issue asks the dashboard and the rules to cover.
	all := strings.Join(append(sources["grafana/pgoptimist.json"], sources["prometheus/alerts.yaml"]...), "\n")
	for _, want := range []string{"pgoptimist_sessions_active", "pgoptimist_guarded_statement_duration_seconds_bucket", "pgoptimist_stale_conflicts_total", "pgoptimist_sessions_refused_total", "pgoptimist_parse_errors_total", "pgoptimist_upstream_errors_total", "pgoptimist_panics_total", "pgoptimist_config_last_reload_successful", "up{"} {
		if !strings.Contains(all, want) {
			t.Errorf("neither the dashboard nor the rules use %s", want)
		}
	}
}

// TestDashboardShape: the dashboard imports cleanly: unique panel ids, a
// data source variable every panel uses, a title and a uid.
func TestDashboardShape(t *testing.T) {
	data, err := os.ReadFile("grafana/pgoptimist.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID        string `json:"uid"`
		Title      string `json:"title"`
		Templating struct {
			List []struct {
				Name string `json:"name"`
				Type string `json:"type"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			ID         int    `json:"id"`
			Type       string `json:"type"`
			Title      string `json:"title"`
			Datasource *struct {
				UID string `json:"uid"`
			} `json:"datasource"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatal(err)
	}
	if d.UID == "" || d.Title == "" {
		t.Error("dashboard needs a uid and a title")
	}
	if !slices.ContainsFunc(d.Templating.List, func(v struct {
		Name string `json:"name"`
		Type string `json:"type"`
	}) bool {
		return v.Name == "datasource" && v.Type == "datasource"
	}) {
		t.Error("no datasource variable")
	}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d repeated", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q does not use the datasource variable", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
	}
}

// TestPromtool runs promtool check rules and the rules' unit tests, when
// promtool is installed (Debian: apt-get install prometheus).
func TestPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (apt-get install prometheus): alert rules not checked by promtool")
	}
	for _, args := range [][]string{
		{"check", "rules", "prometheus/alerts.yaml"},
		{"test", "rules", "prometheus/alerts_test.yaml"},
	} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
