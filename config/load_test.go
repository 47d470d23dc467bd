package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// cleanEnv removes every PGOPTIMIST_* variable for the test's duration.
func cleanEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, EnvPrefix+"_") {
			t.Setenv(k, "") // restores the old value afterwards
			os.Unsetenv(k)
		}
	}
}

func writeFile(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pgoptimist.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func flagSet(t *testing.T, args ...string) *pflag.FlagSet {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return fs
}

func TestDefaults(t *testing.T) {
	d := Defaults()
	want := Config{
		Listen:          "127.0.0.1:6432",
		Upstream:        Upstream{Address: "127.0.0.1:5432", TLS: "prefer"},
		TLS:             ClientTLS{Mode: "disable"},
		Limits:          Limits{MaxConnections: 1000, MaxMessageBytes: 67108864, MaxSQLBytes: 1048576, MaxBufferedBytes: 268435456, MaxStartupConnections: 1000, StartupTimeout: 10 * time.Second, LoginTimeout: time.Minute},
		ShutdownTimeout: 30 * time.Second,
		Log:             Log{Level: "info", Format: "text"},
		Metrics:         Metrics{Listen: ""},
		Guard:           Guard{StaleSQLState: "VL409", RequiredSQLState: "VL428", OnParseError: "forward", TrackedRowsPerSession: 10000},
	}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("Defaults() = %+v\nwant %+v", d, want)
	}
	if err := d.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}

	cleanEnv(t)
	for _, load := range []func() (*Config, error){
		func() (*Config, error) { return LoadFile("") },
		func() (*Config, error) { return Load(nil) },
		func() (*Config, error) { return Load(flagSet(t)) },
		func() (*Config, error) { return LoadFile(writeFile(t, "")) },
		func() (*Config, error) { return LoadFile(writeFile(t, "# only a comment\n")) },
	} {
		c, err := load()
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(*c, want) {
			t.Errorf("loaded %+v\nwant %+v", *c, want)
		}
	}
}

const fullFile = `
listen: 0.0.0.0:7432
upstream:
  address: db.internal:5433
  tls: verify-full
  ca_file: /etc/ssl/db-ca.pem
tls:
  mode: require
  cert_file: /etc/ssl/proxy.pem
  key_file: /etc/ssl/proxy.key
limits:
  max_connections: 250
  max_message_bytes: 16MB
  max_sql_bytes: 65536
  startup_timeout: 5s
shutdown_timeout: 1m30s
log:
  level: debug
  format: json
metrics:
  listen: 127.0.0.1:9930
guard:
  stale_sqlstate: XX409
  required_sqlstate: XX428
  on_parse_error: reject
tables:
  - name: public.address
    column: version
    mode: explicit
  - name: Orders
    column: lock_version
    type: bigint
    key: [id]
    statements: [update]
    mode: tracked
    scope: session
  - name: '"Billing"."Invoice"'
    type: xmin
    mode: required
`

func TestLoadFullFile(t *testing.T) {
	cleanEnv(t)
	c, err := LoadFile(writeFile(t, fullFile))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Listen:          "0.0.0.0:7432",
		Upstream:        Upstream{Address: "db.internal:5433", TLS: "verify-full", CAFile: "/etc/ssl/db-ca.pem"},
		TLS:             ClientTLS{Mode: "require", CertFile: "/etc/ssl/proxy.pem", KeyFile: "/etc/ssl/proxy.key"},
		Limits:          Limits{MaxConnections: 250, MaxMessageBytes: 16 << 20, MaxSQLBytes: 65536, MaxBufferedBytes: 256 << 20, MaxStartupConnections: 1000, StartupTimeout: 5 * time.Second, LoginTimeout: time.Minute},
		ShutdownTimeout: 90 * time.Second,
		Log:             Log{Level: "debug", Format: "json"},
		Metrics:         Metrics{Listen: "127.0.0.1:9930"},
		Guard:           Guard{StaleSQLState: "XX409", RequiredSQLState: "XX428", OnParseError: "reject", TrackedRowsPerSession: 10000},
		Tables: []Table{
			{Name: "public.address", Column: "version", Statements: []string{"update", "delete"}, Mode: "explicit", Scope: "transaction"},
			{Name: "public.orders", Column: "lock_version", Type: "bigint", Key: []string{"id"}, Statements: []string{"update"}, Mode: "tracked", Scope: "session"},
			{Name: `"Billing"."Invoice"`, Column: "xmin", Type: "xmin", Statements: []string{"update", "delete"}, Mode: "required", Scope: "transaction"},
		},
	}
	if !reflect.DeepEqual(*c, want) {
		t.Fatalf("got  %+v\nwant %+v", *c, want)
	}
	if s, tb := c.Tables[2].SchemaTable(); s != "Billing" || tb != "Invoice" {
		t.Errorf("SchemaTable = %q, %q", s, tb)
	}
}

func TestPrecedence(t *testing.T) {
	file := writeFile(t, "listen: 10.0.0.1:1000\nupstream:\n  address: file:5432\nlog:\n  level: warn\nlimits:\n  max_connections: 5\n")

	cases := []struct {
		name  string
		env   map[string]string
		args  []string
		check func(t *testing.T, c *Config)
	}{
		{"file beats defaults", nil, nil, func(t *testing.T, c *Config) {
			if c.Listen != "10.0.0.1:1000" || c.Upstream.Address != "file:5432" || c.Log.Level != "warn" || c.Limits.MaxConnections != 5 {
				t.Errorf("%+v", c)
			}
			if c.Log.Format != "text" {
				t.Errorf("default lost: log.format = %q", c.Log.Format)
			}
		}},
		{"env beats file", map[string]string{
			"PGOPTIMIST_LISTEN":                 "10.0.0.2:2000",
			"PGOPTIMIST_UPSTREAM_ADDRESS":       "env:5432",
			"PGOPTIMIST_LIMITS_MAX_CONNECTIONS": "7",
			"PGOPTIMIST_GUARD_ON_PARSE_ERROR":   "reject",
		}, nil, func(t *testing.T, c *Config) {
			if c.Listen != "10.0.0.2:2000" || c.Upstream.Address != "env:5432" || c.Limits.MaxConnections != 7 || c.Guard.OnParseError != "reject" {
				t.Errorf("%+v", c)
			}
			if c.Log.Level != "warn" {
				t.Errorf("file value lost: log.level = %q", c.Log.Level)
			}
		}},
		{"flag beats env", map[string]string{
			"PGOPTIMIST_LISTEN":                 "10.0.0.2:2000",
			"PGOPTIMIST_UPSTREAM_ADDRESS":       "env:5432",
			"PGOPTIMIST_LOG_LEVEL":              "error",
			"PGOPTIMIST_METRICS_LISTEN":         "127.0.0.1:9000",
			"PGOPTIMIST_LIMITS_MAX_CONNECTIONS": "7",
		}, []string{"--listen", "10.0.0.3:3000", "--upstream=/var/run/postgresql", "--log-level", "debug", "--metrics-listen", ""}, func(t *testing.T, c *Config) {
			if c.Listen != "10.0.0.3:3000" || c.Upstream.Address != "/var/run/postgresql" || c.Log.Level != "debug" || c.Metrics.Listen != "" {
				t.Errorf("%+v", c)
			}
			if c.Limits.MaxConnections != 7 {
				t.Errorf("env value lost: %d", c.Limits.MaxConnections)
			}
		}},
		{"flag not given leaves file", nil, []string{"--log-level", "error"}, func(t *testing.T, c *Config) {
			if c.Listen != "10.0.0.1:1000" || c.Log.Level != "error" {
				t.Errorf("%+v", c)
			}
		}},
		{"empty env counts as set", map[string]string{"PGOPTIMIST_METRICS_LISTEN": ""}, nil, func(t *testing.T, c *Config) {
			if c.Metrics.Listen != "" {
				t.Errorf("metrics.listen = %q", c.Metrics.Listen)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cleanEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			c, err := Load(flagSet(t, append([]string{"--config", file}, tc.args...)...))
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestConfigEnvNamesFile(t *testing.T) {
	cleanEnv(t)
	t.Setenv(ConfigEnv, writeFile(t, "listen: 10.9.9.9:1\n"))
	c, err := Load(flagSet(t))
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "10.9.9.9:1" {
		t.Errorf("listen = %q", c.Listen)
	}
	// --config wins over $PGOPTIMIST_CONFIG.
	c, err = Load(flagSet(t, "--config", writeFile(t, "listen: 10.8.8.8:1\n")))
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "10.8.8.8:1" {
		t.Errorf("listen = %q", c.Listen)
	}
}

// TestEveryKeyFromEnv sets each scalar key through its variable alone.
func TestEveryKeyFromEnv(t *testing.T) {
	values := map[string]string{
		"listen":                         "10.1.1.1:1",
		"upstream.address":               "10.1.1.2:2",
		"upstream.tls":                   "require",
		"upstream.ca_file":               "/ca.pem",
		"tls.mode":                       "allow",
		"tls.cert_file":                  "/c.pem",
		"tls.key_file":                   "/k.pem",
		"limits.max_connections":         "3",
		"limits.max_message_bytes":       "2kB",
		"limits.max_sql_bytes":           "100",
		"limits.startup_timeout":         "2s",
		"limits.login_timeout":           "4s",
		"limits.max_buffered_bytes":      "1MiB",
		"limits.max_startup_connections": "7",
		"shutdown_timeout":               "3s",
		"log.level":                      "warn",
		"log.format":                     "json",
		"metrics.listen":                 ":9930",
		"guard.stale_sqlstate":           "AB123",
		"guard.required_sqlstate":        "AB124",
		"guard.on_parse_error":           "reject",
		"guard.tracked_rows_per_session": "50",
	}
	if len(values) != len(Keys()) {
		t.Fatalf("test covers %d keys, config has %d", len(values), len(Keys()))
	}
	cleanEnv(t)
	for _, k := range Keys() {
		t.Setenv(EnvName(k), values[k])
	}
	c, err := LoadFile("")
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Listen:          "10.1.1.1:1",
		Upstream:        Upstream{Address: "10.1.1.2:2", TLS: "require", CAFile: "/ca.pem"},
		TLS:             ClientTLS{Mode: "allow", CertFile: "/c.pem", KeyFile: "/k.pem"},
		Limits:          Limits{MaxConnections: 3, MaxMessageBytes: 2048, MaxSQLBytes: 100, MaxBufferedBytes: 1 << 20, MaxStartupConnections: 7, StartupTimeout: 2 * time.Second, LoginTimeout: 4 * time.Second},
		ShutdownTimeout: 3 * time.Second,
		Log:             Log{Level: "warn", Format: "json"},
		Metrics:         Metrics{Listen: ":9930"},
		Guard:           Guard{StaleSQLState: "AB123", RequiredSQLState: "AB124", OnParseError: "reject", TrackedRowsPerSession: 50},
	}
	if !reflect.DeepEqual(*c, want) {
		t.Fatalf("got  %+v\nwant %+v", *c, want)
	}
	if EnvName("upstream.address") != "PGOPTIMIST_UPSTREAM_ADDRESS" || EnvName("limits.max_connections") != "PGOPTIMIST_LIMITS_MAX_CONNECTIONS" {
		t.Error("EnvName")
	}
}

func TestTablesEnv(t *testing.T) {
	file := writeFile(t, "tables:\n  - name: from_file\n")
	cases := []struct {
		name, env string
		want      []string // table names
		wantErr   string
	}{
		{"yaml", "- name: a\n  mode: tracked\n- name: b\n", []string{"public.a", "public.b"}, ""},
		{"json", `[{"name": "s.a", "statements": ["delete"]}]`, []string{"s.a"}, ""},
		{"blank keeps file", "  ", []string{"public.from_file"}, ""},
		{"explicitly none", "[]", []string{}, ""},
		{"bad yaml", "- name: [", nil, "PGOPTIMIST_TABLES: not valid YAML or JSON"},
		{"unknown key", `[{"name": "a", "colum": "v"}]`, nil, `config: unknown key "tables[0].colum" in PGOPTIMIST_TABLES (did you mean "tables[0].column"?)`},
		{"invalid", `[{"name": "a", "mode": "x"}]`, nil, `tables[0].mode: must be one of explicit, tracked, required, observe (got "x")`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cleanEnv(t)
			t.Setenv(TablesEnv, tc.env)
			c, err := LoadFile(file)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := []string{}
			for _, tb := range c.Tables {
				got = append(got, tb.Name)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("tables = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestUnknownKeys(t *testing.T) {
	cases := []struct{ file, want string }{
		{"upstrem:\n  address: x:1\n", `config: unknown key "upstrem" (did you mean "upstream"?)`},
		{"upstream:\n  adress: x:1\n", `config: unknown key "upstream.adress" (did you mean "upstream.address"?)`},
		{"max_connections: 5\n", `config: unknown key "max_connections" (did you mean "limits.max_connections"?)`},
		{"tables:\n  - name: a\n  - name: b\n    colum: v\n", `config: unknown key "tables[1].colum" (did you mean "tables[1].column"?)`},
		{"completely_different: 1\n", `config: unknown key "completely_different"`},
		{"log:\n  level: info\n  colour: true\n", `config: unknown key "log.colour"`},
	}
	cleanEnv(t)
	for _, tc := range cases {
		_, err := LoadFile(writeFile(t, tc.file))
		var uk *UnknownKeyError
		if !errors.As(err, &uk) {
			t.Errorf("%q: err = %v, want an UnknownKeyError", tc.file, err)
			continue
		}
		if err.Error() != tc.want {
			t.Errorf("%q: err = %q, want %q", tc.file, err, tc.want)
		}
	}
	// Several unknown keys are all named, one per line.
	_, err := LoadFile(writeFile(t, "a: 1\nb: 2\n"))
	if err == nil || err.Error() != "config: unknown key \"a\"\nconfig: unknown key \"b\"" {
		t.Errorf("err = %q", err)
	}
	// Keys are matched without regard to case, as viper does.
	if _, err := LoadFile(writeFile(t, "Listen: 1.2.3.4:5\nUpstream:\n  Address: h:1\ntables:\n  - Name: a\n")); err != nil {
		t.Errorf("mixed-case keys: %v", err)
	}
}

func TestFileErrors(t *testing.T) {
	cleanEnv(t)
	if _, err := LoadFile(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.HasPrefix(err.Error(), "config: ") {
		t.Errorf("missing file: %v", err)
	}
	if _, err := LoadFile(writeFile(t, "listen: [\n")); err == nil {
		t.Error("bad YAML accepted")
	}
	if _, err := LoadFile(writeFile(t, "- a\n- b\n")); err == nil || !strings.Contains(err.Error(), "top level must be a mapping") {
		t.Errorf("list at top level: %v", err)
	}
}

func TestDurationsAndSizes(t *testing.T) {
	cases := []struct {
		name    string
		file    string
		check   func(c *Config) bool
		wantErr string
	}{
		{"duration", "limits:\n  startup_timeout: 250ms\nshutdown_timeout: 2m\n",
			func(c *Config) bool {
				return c.Limits.StartupTimeout == 250*time.Millisecond && c.ShutdownTimeout == 2*time.Minute
			}, ""},
		{"duration without unit", "shutdown_timeout: 30\n", nil,
			`shutdown_timeout: must be a Go duration such as "10s" or "1m30s" (got 30)`},
		{"duration garbage", "limits:\n  startup_timeout: soon\n", nil,
			`limits.startup_timeout: must be a Go duration such as "10s" or "1m30s" (got "soon")`},
		{"zero duration", "shutdown_timeout: 0s\n", nil, "shutdown_timeout: must be positive (got 0s)"},
		{"negative duration", "limits:\n  startup_timeout: -1s\n", nil, "limits.startup_timeout: must be positive (got -1s)"},
		{"plain bytes", "limits:\n  max_message_bytes: 2048\n  max_sql_bytes: '4096'\n",
			func(c *Config) bool { return c.Limits.MaxMessageBytes == 2048 && c.Limits.MaxSQLBytes == 4096 }, ""},
		{"units", "limits:\n  max_message_bytes: 1GB\n  max_sql_bytes: 64 kB\n",
			func(c *Config) bool { return c.Limits.MaxMessageBytes == 1<<30 && c.Limits.MaxSQLBytes == 64<<10 }, ""},
		{"iec units", "limits:\n  max_message_bytes: 2MiB\n  max_sql_bytes: 10B\n",
			func(c *Config) bool { return c.Limits.MaxMessageBytes == 2<<20 && c.Limits.MaxSQLBytes == 10 }, ""},
		{"float bytes", "limits:\n  max_message_bytes: 1e6\n",
			func(c *Config) bool { return c.Limits.MaxMessageBytes == 1000000 }, ""},
		{"bad unit", "limits:\n  max_message_bytes: 5 parsecs\n", nil,
			`limits.max_message_bytes: must be a number of bytes, optionally with a unit kB, MB or GB (1024-based) (got "5 parsecs")`},
		{"unit on a count", "limits:\n  max_connections: 1kB\n", nil,
			`limits.max_connections: must be an integer (got "1kB")`},
		{"string for a number", "limits:\n  max_connections: lots\n", nil,
			`limits.max_connections: must be an integer (got "lots")`},
		{"number for a string", "guard:\n  stale_sqlstate: 40001\n", nil,
			`guard.stale_sqlstate: must be a string (got 40001; quote it in YAML)`},
		{"section not a mapping", "upstream: db:5432\n", nil,
			`upstream: must be a mapping of keys (got "db:5432")`},
		{"null keeps default", "listen:\nlimits:\n", func(c *Config) bool { return c.Listen == "127.0.0.1:6432" }, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cleanEnv(t)
			c, err := LoadFile(writeFile(t, tc.file))
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("err = %q, want %q", err, tc.wantErr)
				}
				var ve *ValidationError
				if !errors.As(err, &ve) {
					t.Errorf("err is %T, want *ValidationError", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(c) {
				t.Errorf("got %+v", c.Limits)
			}
		})
	}

	// From the environment too.
	cleanEnv(t)
	t.Setenv("PGOPTIMIST_LIMITS_MAX_MESSAGE_BYTES", "8MB")
	t.Setenv("PGOPTIMIST_LIMITS_STARTUP_TIMEOUT", "1m")
	c, err := LoadFile("")
	if err != nil {
		t.Fatal(err)
	}
	if c.Limits.MaxMessageBytes != 8<<20 || c.Limits.StartupTimeout != time.Minute {
		t.Errorf("%+v", c.Limits)
	}
	t.Setenv("PGOPTIMIST_LIMITS_MAX_CONNECTIONS", "")
	if _, err := LoadFile(""); err == nil || !strings.Contains(err.Error(), `limits.max_connections: must be an integer (got "")`) {
		t.Errorf("empty number: %v", err)
	}
}

func TestDecodeAndValidationProblemsTogether(t *testing.T) {
	cleanEnv(t)
	_, err := LoadFile(writeFile(t, `
limits:
  max_connections: lots
log:
  level: loud
tables:
  - just a string
  - name: b
    statements: [update, 7]
    mode: trackd
`))
	want := []string{
		`limits.max_connections: must be an integer (got "lots")`,
		`tables[0]: must be a mapping with keys name, column, type, key, statements, mode, scope (got "just a string")`,
		`tables[1].statements[1]: must be a string (got 7)`,
		`log.level: must be one of debug, info, warn, error (got "loud")`,
		`tables[1].mode: must be one of explicit, tracked, required, observe (got "trackd")`,
	}
	if err == nil || err.Error() != strings.Join(want, "\n") {
		t.Fatalf("err =\n%v\nwant\n%s", err, strings.Join(want, "\n"))
	}
}

func TestReloadKeepsFlags(t *testing.T) {
	cleanEnv(t)
	path := writeFile(t, "listen: 10.0.0.1:1\ntables:\n  - name: a\n")
	fs := flagSet(t, "--config", path, "--listen", "10.0.0.9:9")
	c, err := Load(fs)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("listen: 10.0.0.1:1\ntables:\n  - name: a\n  - name: b\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c2, err := Load(fs)
	if err != nil {
		t.Fatal(err)
	}
	if c2.Listen != "10.0.0.9:9" || len(c2.Tables) != 2 || len(c.Tables) != 1 {
		t.Errorf("reload: %+v", c2)
	}
	c3, err := LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if c3.Listen != "10.0.0.1:1" || len(c3.Tables) != 2 {
		t.Errorf("LoadFile: %+v", c3)
	}
}
