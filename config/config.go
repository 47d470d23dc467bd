// Package config defines pgoptimist's configuration: its schema, defaults,
// validation and loading from a YAML file, PGOPTIMIST_* environment variables
// and command-line flags.
package config

import "time"

// Config is the whole configuration of one pgoptimist process.
type Config struct {
	Listen          string        `mapstructure:"listen"`
	Upstream        Upstream      `mapstructure:"upstream"`
	TLS             ClientTLS     `mapstructure:"tls"`
	Limits          Limits        `mapstructure:"limits"`
	ShutdownTimeout time.Duration `mapstructure:"shutdown_timeout"`
	Log             Log           `mapstructure:"log"`
	Metrics         Metrics       `mapstructure:"metrics"`
	Guard           Guard         `mapstructure:"guard"`
	Tables          []Table       `mapstructure:"tables"`
}

// Upstream is the PostgreSQL server the proxy connects to.
type Upstream struct {
	Address string `mapstructure:"address"` // host:port, or a Unix socket directory (absolute path)
	TLS     string `mapstructure:"tls"`     // disable | prefer | require | verify-full
	CAFile  string `mapstructure:"ca_file"`
}

// ClientTLS is TLS towards clients.
type ClientTLS struct {
	Mode     string `mapstructure:"mode"` // disable | allow | require
	CertFile string `mapstructure:"cert_file"`
	KeyFile  string `mapstructure:"key_file"`
}

// Limits bound what one client may ask of the proxy.
type Limits struct {
	MaxConnections  int `mapstructure:"max_connections"`
	MaxMessageBytes int `mapstructure:"max_message_bytes"`
	MaxSQLBytes     int `mapstructure:"max_sql_bytes"`
	// MaxBufferedBytes is the process-wide budget for client messages the
	// proxy must hold whole (a guarded statement's text, the parameters of
	// a guarded Bind) beyond each session's own buffers. A session whose
	// message does not fit is ended with 53200.
	MaxBufferedBytes int `mapstructure:"max_buffered_bytes"`
	// MaxStartupConnections bounds the connections that have not finished
	// logging in; more are refused at once with 53300.
	MaxStartupConnections int `mapstructure:"max_startup_connections"`
	// StartupTimeout bounds the wait for a client's startup packet.
	StartupTimeout time.Duration `mapstructure:"startup_timeout"`
	// LoginTimeout bounds the login that follows it (authentication and the
	// guard's catalog checks), like PostgreSQL's authentication_timeout.
	LoginTimeout time.Duration `mapstructure:"login_timeout"`
}

// Log configures structured logging.
type Log struct {
	Level  string `mapstructure:"level"`  // debug | info | warn | error
	Format string `mapstructure:"format"` // text | json
}

// Metrics configures the HTTP endpoint serving /metrics, /healthz and /readyz.
type Metrics struct {
	Listen string `mapstructure:"listen"`
}

// Guard holds settings shared by all table policies.
type Guard struct {
	StaleSQLState    string `mapstructure:"stale_sqlstate"`
	RequiredSQLState string `mapstructure:"required_sqlstate"`
	OnParseError     string `mapstructure:"on_parse_error"` // forward | reject
	// TrackedRowsPerSession caps the row versions one session remembers
	// in tracked modes; the least recently used are forgotten first.
	TrackedRowsPerSession int `mapstructure:"tracked_rows_per_session"`
}

// Table is the policy of one guarded table.
type Table struct {
	Name       string   `mapstructure:"name"`       // schema.table (required; "public." is assumed when unqualified)
	Column     string   `mapstructure:"column"`     // version column, default "version"
	Type       string   `mapstructure:"type"`       // "" (discover) | integer | bigint | smallint | timestamp | timestamptz | uuid | xmin
	Key        []string `mapstructure:"key"`        // default: primary key, discovered
	Statements []string `mapstructure:"statements"` // subset of update, delete; default both
	Mode       string   `mapstructure:"mode"`       // explicit | tracked | required | observe
	Scope      string   `mapstructure:"scope"`      // transaction | session
}

// Table policy defaults (see docs/configuration.md, "Table policies").
const (
	DefaultSchema = "public"
	DefaultColumn = "version"
	DefaultMode   = "explicit"
	DefaultScope  = "transaction"
)

// DefaultStatements are the statements guarded when a table does not say.
func DefaultStatements() []string { return []string{"update", "delete"} }

// Defaults returns the configuration used where the file, the environment and
// the flags say nothing. It has no tables; per-table defaults are filled in by
// Normalize (column "version", statements [update, delete], mode explicit,
// scope transaction, schema public).
func Defaults() Config {
	return Config{
		Listen: "127.0.0.1:6432",
		Upstream: Upstream{
			Address: "127.0.0.1:5432",
			TLS:     "prefer",
		},
		TLS: ClientTLS{Mode: "disable"},
		Limits: Limits{
			MaxConnections:        1000,
			MaxMessageBytes:       64 << 20,  // 67108864
			MaxSQLBytes:           1 << 20,   // 1048576
			MaxBufferedBytes:      256 << 20, // 268435456
			MaxStartupConnections: 1000,
			StartupTimeout:        10 * time.Second,
			LoginTimeout:          60 * time.Second,
		},
		ShutdownTimeout: 30 * time.Second,
		Log:             Log{Level: "info", Format: "text"},
		Metrics:         Metrics{Listen: ""},
		Guard: Guard{
			StaleSQLState:    "VL409",
			RequiredSQLState: "VL428",
			OnParseError:     "forward",

			TrackedRowsPerSession: 10000,
		},
	}
}
