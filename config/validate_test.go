package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func validConfig() Config {
	c := Defaults()
	c.Tables = []Table{{Name: "address"}}
	c.Normalize()
	return c
}

func TestValidate(t *testing.T) {
	cases := []struct {
		name   string
		modify func(c *Config)
		want   []string // every problem, in order; nil: valid
	}{
		{"defaults with a table", func(c *Config) {}, nil},
		{"listen syntax", func(c *Config) { c.Listen = "6432" }, []string{`listen: must be host:port (got "6432")`}},
		{"listen empty", func(c *Config) { c.Listen = "" }, []string{`listen: required (host:port)`}},
		{"listen port", func(c *Config) { c.Listen = "localhost:pg" }, []string{`listen: must be host:port with a numeric port (got "localhost:pg")`}},
		{"listen any interface, any port", func(c *Config) { c.Listen = ":0" }, nil},
		{"listen ipv6", func(c *Config) { c.Listen = "[::1]:6432" }, nil},
		{"upstream syntax", func(c *Config) { c.Upstream.Address = "db" },
			[]string{`upstream.address: must be host:port (got "db"), or an absolute Unix socket directory`}},
		{"upstream no host", func(c *Config) { c.Upstream.Address = ":5432" },
			[]string{`upstream.address: must be host:port with a host (got ":5432"), or an absolute Unix socket directory`}},
		{"upstream port zero", func(c *Config) { c.Upstream.Address = "db:0" },
			[]string{`upstream.address: must be host:port with a port from 1 to 65535 (got "db:0"), or an absolute Unix socket directory`}},
		{"upstream relative path", func(c *Config) { c.Upstream.Address = "run/postgresql" },
			[]string{`upstream.address: must be host:port (got "run/postgresql"), or an absolute Unix socket directory`}},
		{"upstream unix", func(c *Config) { c.Upstream.Address = "/var/run/postgresql" }, nil},
		{"upstream empty", func(c *Config) { c.Upstream.Address = "" }, []string{`upstream.address: required`}},
		{"upstream tls", func(c *Config) { c.Upstream.TLS = "always" },
			[]string{`upstream.tls: must be one of disable, prefer, require, verify-full (got "always")`}},
		{"verify-full needs no ca_file", func(c *Config) { c.Upstream.TLS = "verify-full" }, nil},
		{"tls over unix socket", func(c *Config) { c.Upstream.Address = "/tmp"; c.Upstream.TLS = "require" },
			[]string{`upstream.tls: require is impossible over a Unix socket (PostgreSQL offers no TLS there); use disable or prefer`}},
		{"client tls mode", func(c *Config) { c.TLS.Mode = "on" },
			[]string{`tls.mode: must be one of disable, allow, require (got "on")`}},
		{"client tls require without files", func(c *Config) { c.TLS.Mode = "require" },
			[]string{`tls.cert_file: required when tls.mode is require`, `tls.key_file: required when tls.mode is require`}},
		{"client tls allow without key", func(c *Config) { c.TLS.Mode = "allow"; c.TLS.CertFile = "c.pem" },
			[]string{`tls.key_file: required when tls.mode is allow`}},
		{"client tls complete", func(c *Config) { c.TLS = ClientTLS{Mode: "require", CertFile: "c", KeyFile: "k"} }, nil},
		{"max connections", func(c *Config) { c.Limits.MaxConnections = 0 }, []string{`limits.max_connections: must be positive (got 0)`}},
		{"max message bytes", func(c *Config) { c.Limits.MaxMessageBytes = 1023 }, []string{`limits.max_message_bytes: must be at least 1024 (got 1023)`}},
		{"max message bytes minimum", func(c *Config) { c.Limits.MaxMessageBytes = 1024 }, nil},
		{"max sql bytes", func(c *Config) { c.Limits.MaxSQLBytes = -1 }, []string{`limits.max_sql_bytes: must be positive (got -1)`}},
		{"startup timeout", func(c *Config) { c.Limits.StartupTimeout = 0 }, []string{`limits.startup_timeout: must be positive (got 0s)`}},
		{"shutdown timeout", func(c *Config) { c.ShutdownTimeout = -time.Second }, []string{`shutdown_timeout: must be positive (got -1s)`}},
		{"log level", func(c *Config) { c.Log.Level = "trace" }, []string{`log.level: must be one of debug, info, warn, error (got "trace")`}},
		{"log format", func(c *Config) { c.Log.Format = "xml" }, []string{`log.format: must be one of text, json (got "xml")`}},
		{"metrics listen", func(c *Config) { c.Metrics.Listen = "9930" },
			[]string{`metrics.listen: must be host:port (got "9930"), or empty to serve no metrics`}},
		{"metrics same as listen", func(c *Config) { c.Metrics.Listen = c.Listen },
			[]string{`metrics.listen: must differ from listen (both "127.0.0.1:6432")`}},
		{"metrics ok", func(c *Config) { c.Metrics.Listen = ":9930" }, nil},
		{"stale sqlstate", func(c *Config) { c.Guard.StaleSQLState = "vl409" },
			[]string{`guard.stale_sqlstate: must be 5 characters of digits or upper-case letters (got "vl409")`}},
		{"required sqlstate", func(c *Config) { c.Guard.RequiredSQLState = "VL4280" },
			[]string{`guard.required_sqlstate: must be 5 characters of digits or upper-case letters (got "VL4280")`}},
		{"same sqlstates", func(c *Config) { c.Guard.RequiredSQLState = "VL409" },
			[]string{`guard.required_sqlstate: must differ from guard.stale_sqlstate (both "VL409")`}},
		{"on parse error", func(c *Config) { c.Guard.OnParseError = "ignore" },
			[]string{`guard.on_parse_error: must be one of forward, reject (got "ignore")`}},

		{"table name required", func(c *Config) { c.Tables[0].Name = "" }, []string{`tables[0].name: required`}},
		{"table name three parts", func(c *Config) { c.Tables[0].Name = "db.public.address" },
			[]string{`tables[0].name: must be table or schema.table (got "db.public.address")`}},
		{"table name syntax", func(c *Config) { c.Tables[0].Name = "my table" },
			[]string{`tables[0].name: "my table" is not a valid unquoted identifier (write it in double quotes)`}},
		{"table name quote", func(c *Config) { c.Tables[0].Name = `public."address` },
			[]string{`tables[0].name: unterminated quoted identifier in "public.\"address"`}},
		{"table name empty part", func(c *Config) { c.Tables[0].Name = "public." },
			[]string{`tables[0].name: empty part in "public."`}},
		{"table name too long", func(c *Config) { c.Tables[0].Name = strings.Repeat("a", 64) },
			[]string{`tables[0].name: identifier "` + strings.Repeat("a", 64) + `" is longer than 63 bytes (PostgreSQL would truncate it)`}},
		{"duplicate table", func(c *Config) {
			c.Tables = append(c.Tables, Table{Name: "other"}, Table{Name: "ADDRESS"})
			c.Normalize()
		}, []string{`tables[2].name: duplicate of tables[0]`}},
		{"quoted is not a duplicate", func(c *Config) {
			c.Tables = append(c.Tables, Table{Name: `"Address"`})
			c.Normalize()
		}, nil},
		{"type", func(c *Config) { c.Tables[0].Type = "serial" },
			[]string{`tables[0].type: must be one of integer, bigint, smallint, timestamp, timestamptz, uuid, xmin (got "serial")`}},
		{"xmin type needs xmin column", func(c *Config) { c.Tables[0].Type = "xmin" },
			[]string{`tables[0].column: must be xmin when type is xmin (got "version")`}},
		{"xmin column needs xmin type", func(c *Config) { c.Tables[0].Column = "xmin"; c.Tables[0].Type = "integer" },
			[]string{`tables[0].type: must be xmin (or left out) when column is xmin (got "integer")`}},
		{"system column", func(c *Config) { c.Tables[0].Column = "ctid" },
			[]string{`tables[0].column: ctid is a system column; of the system columns only xmin can serve as a version`}},
		{"column syntax", func(c *Config) { c.Tables[0].Column = "a.b" },
			[]string{`tables[0].column: must be a single identifier, not a qualified name (got "a.b")`}},
		{"column required", func(c *Config) { c.Tables[0].Column = "" }, []string{`tables[0].column: required`}},
		{"key problems", func(c *Config) { c.Tables[0].Key = []string{"id", "ID", "version", "", "ctid"} },
			[]string{
				`tables[0].key[1]: duplicate column "id"`,
				`tables[0].key[2]: must not be the version column`,
				`tables[0].key[3]: empty column name`,
				`tables[0].key[4]: ctid is a system column, not a key`,
			}},
		{"key empty list", func(c *Config) { c.Tables[0].Key = []string{} },
			[]string{`tables[0].key: must list at least one column, or be left out to use the primary key`}},
		{"statements empty", func(c *Config) { c.Tables[0].Statements = []string{} },
			[]string{`tables[0].statements: must list at least one of update, delete`}},
		{"statements unknown", func(c *Config) { c.Tables[0].Statements = []string{"update", "insert", "update"} },
			[]string{`tables[0].statements[1]: must be one of update, delete (got "insert")`, `tables[0].statements[2]: duplicate "update"`}},
		{"mode", func(c *Config) { c.Tables[0].Mode = "trackd" },
			[]string{`tables[0].mode: must be one of explicit, tracked, required, observe (got "trackd")`}},
		{"scope", func(c *Config) { c.Tables[0].Scope = "forever" },
			[]string{`tables[0].scope: must be one of transaction, session (got "forever")`}},
		{"many at once", func(c *Config) {
			c.Limits.MaxConnections = -5
			c.Log.Format = "yaml"
			c.Tables = append(c.Tables, Table{Name: "b", Column: "v", Statements: []string{"update"}, Mode: "tracked", Scope: "session"}, Table{Mode: "trackd", Column: "v", Statements: []string{"update"}, Scope: "session"})
		}, []string{
			`limits.max_connections: must be positive (got -5)`,
			`log.format: must be one of text, json (got "yaml")`,
			`tables[2].name: required`,
			`tables[2].mode: must be one of explicit, tracked, required, observe (got "trackd")`,
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig()
			tc.modify(&c)
			err := c.Validate()
			if tc.want == nil {
				if err != nil {
					t.Fatalf("unexpected error:\n%v", err)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("err = %v (%T), want *ValidationError", err, err)
			}
			if got := err.Error(); got != strings.Join(tc.want, "\n") {
				t.Fatalf("got\n%s\nwant\n%s", got, strings.Join(tc.want, "\n"))
			}
			for i, p := range ve.Problems {
				if !strings.HasPrefix(tc.want[i], p.Key+": ") || p.Key == "" {
					t.Errorf("problem %d key %q", i, p.Key)
				}
			}
		})
	}
}

func TestValidateViaLoadNamesKey(t *testing.T) {
	cleanEnv(t)
	_, err := LoadFile(writeFile(t, "upstream:\n  tls: sometimes\ntables:\n  - name: a\n  - name: b\n    mode: trackd\n  - name: public.a\n"))
	want := "upstream.tls: must be one of disable, prefer, require, verify-full (got \"sometimes\")\n" +
		"tables[1].mode: must be one of explicit, tracked, required, observe (got \"trackd\")\n" +
		"tables[2].name: duplicate of tables[0]"
	if err == nil || err.Error() != want {
		t.Fatalf("err =\n%v\nwant\n%s", err, want)
	}
}

func TestTableDefaults(t *testing.T) {
	cleanEnv(t)
	c, err := LoadFile(writeFile(t, `
tables:
  - name: address
  - name: Sales.Orders
    column: Lock_Version
    key: ID, "TenantId"
    statements: update
    mode: TRACKED
    type: INT8
  - name: '"MyTable"'
    column: '"Rev"'
  - name: audit
    column: xmin
  - name: events
    type: timestamp with time zone
    statements: [Delete, delete]
    key: []
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []Table{
		{Name: "public.address", Column: "version", Statements: []string{"update", "delete"}, Mode: "explicit", Scope: "transaction"},
		{Name: "sales.orders", Column: "lock_version", Type: "bigint", Key: []string{"id", `"TenantId"`}, Statements: []string{"update"}, Mode: "tracked", Scope: "transaction"},
		{Name: `public."MyTable"`, Column: `"Rev"`, Statements: []string{"update", "delete"}, Mode: "explicit", Scope: "transaction"},
		{Name: "public.audit", Column: "xmin", Type: "xmin", Statements: []string{"update", "delete"}, Mode: "explicit", Scope: "transaction"},
		{Name: "public.events", Column: "version", Type: "timestamptz", Statements: []string{"delete"}, Mode: "explicit", Scope: "transaction"},
	}
	if !reflect.DeepEqual(c.Tables, want) {
		t.Fatalf("got  %+v\nwant %+v", c.Tables, want)
	}

	type ids struct {
		schema, table, column string
		key                   []string
		update, delete        bool
	}
	wantIDs := []ids{
		{"public", "address", "version", nil, true, true},
		{"sales", "orders", "lock_version", []string{"id", "TenantId"}, true, false},
		{"public", "MyTable", "Rev", nil, true, true},
		{"public", "audit", "xmin", nil, true, true},
		{"public", "events", "version", nil, false, true},
	}
	for i, tb := range c.Tables {
		s, n := tb.SchemaTable()
		got := ids{s, n, tb.VersionColumn(), tb.KeyColumns(), tb.GuardsUpdate(), tb.GuardsDelete()}
		if !reflect.DeepEqual(got, wantIDs[i]) {
			t.Errorf("tables[%d]: %+v, want %+v", i, got, wantIDs[i])
		}
	}

	// Normalize is idempotent.
	again := *c
	again.Tables = append([]Table(nil), c.Tables...)
	for i := range again.Tables {
		again.Tables[i].Key = append([]string(nil), c.Tables[i].Key...)
		if c.Tables[i].Key == nil {
			again.Tables[i].Key = nil
		}
	}
	again.Normalize()
	if !reflect.DeepEqual(again.Tables, c.Tables) {
		t.Errorf("second Normalize changed tables:\n%+v\n%+v", again.Tables, c.Tables)
	}
}

func TestSchemaTable(t *testing.T) {
	cases := []struct{ name, schema, table string }{
		{"address", "public", "address"},
		{"Address", "public", "address"},
		{`"Address"`, "public", "Address"},
		{"app.Address", "app", "address"},
		{`"App"."Add""ress"`, "App", `Add"ress`},
		{`s."a.b"`, "s", "a.b"},
		{"café", "public", "café"},
		{"a.b.c", "", ""},
		{"", "", ""},
		{`"unterminated`, "", ""},
	}
	for _, tc := range cases {
		s, tb := Table{Name: tc.name}.SchemaTable()
		if s != tc.schema || tb != tc.table {
			t.Errorf("SchemaTable(%q) = %q, %q; want %q, %q", tc.name, s, tb, tc.schema, tc.table)
		}
	}
	for in, want := range map[string]string{
		"address": "address", "Address": `"Address"`, "a b": `"a b"`, `a"b`: `"a""b"`, "_x$1": "_x$1", "1a": `"1a"`, "café": `"café"`, "": `""`,
	} {
		if got := QuoteIdentifier(in); got != want {
			t.Errorf("QuoteIdentifier(%q) = %s, want %s", in, got, want)
		}
	}
}
