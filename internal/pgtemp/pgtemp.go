// Package pgtemp starts throwaway PostgreSQL servers for integration tests,
// benchmarks and `pgoptimist demo`.
//
// A server lives in a private temporary directory (data directory, Unix socket
// directory and server log) that is removed by Stop. It listens on 127.0.0.1 on a
// free TCP port and on a private Unix socket. The server binaries (initdb, pg_ctl,
// postgres) are looked up on PATH and then under /usr/lib/postgresql/*/bin.
//
// PostgreSQL refuses to run as root. When the calling process is root, initdb and
// pg_ctl run as the unprivileged "postgres" OS user (created with useradd when it
// does not exist) and the temporary directories are owned by that user.
package pgtemp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Options configure a throwaway server. The zero value is a trust-authenticated
// server on a free port.
type Options struct {
	// Port is the TCP port on 127.0.0.1; 0 picks a free one.
	Port int
	// Auth is the pg_hba method for TCP connections: "trust" (default), "md5" or
	// "scram-sha-256". The Unix socket always uses trust.
	Auth string
	// SSLCertFile and SSLKeyFile, when both set, enable ssl=on with copies of
	// these files.
	SSLCertFile, SSLKeyFile string
	// Conf holds extra postgresql.conf lines, appended last.
	Conf []string
	// Log receives the server log as it is written; nil discards it. The log is
	// also kept in the data directory and its tail is included in errors.
	Log io.Writer
}

// Server is a running throwaway PostgreSQL server.
type Server struct {
	Host      string // always 127.0.0.1
	Port      int
	SocketDir string // Unix socket directory (connect with host=SocketDir)
	DataDir   string
	Superuser string // always "postgres"; trusted over the Unix socket

	baseDir string
	logFile string
	pgCtl   string
	runAs   *osUser

	tailStop chan struct{}
	tailDone chan struct{}

	mu      sync.Mutex
	stopped bool
	stopErr error
}

// osUser is the identity initdb and pg_ctl run as when the caller is root.
type osUser struct {
	uid, gid uint32
	home     string
}

const (
	superuser      = "postgres"
	startTimeout   = 60 // seconds, for pg_ctl -t
	maxPortRetries = 5
)

// Start initializes a new data directory and starts a server on it. The
// context bounds initdb and server start-up; it does not limit the server's
// lifetime (call Stop).
func Start(ctx context.Context, opts Options) (*Server, error) {
	auth := opts.Auth
	if auth == "" {
		auth = "trust"
	}
	switch auth {
	case "trust", "md5", "scram-sha-256", "password", "reject":
	default:
		return nil, fmt.Errorf("pgtemp: unsupported auth method %q", auth)
	}
	if (opts.SSLCertFile == "") != (opts.SSLKeyFile == "") {
		return nil, errors.New("pgtemp: SSLCertFile and SSLKeyFile must be set together")
	}

	pgCtl, initdb, err := findServerBins()
	if err != nil {
		return nil, err
	}

	var runAs *osUser
	if os.Geteuid() == 0 {
		if runAs, err = unprivilegedUser(ctx); err != nil {
			return nil, err
		}
	}

	base, err := makeBaseDir(runAs != nil)
	if err != nil {
		return nil, err
	}
	s := &Server{
		Host:      "127.0.0.1",
		SocketDir: filepath.Join(base, "sock"),
		DataDir:   filepath.Join(base, "data"),
		Superuser: superuser,
		baseDir:   base,
		logFile:   filepath.Join(base, "data", "server.log"),
		pgCtl:     pgCtl,
		runAs:     runAs,
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(base)
		}
	}()

	for _, d := range []string{s.SocketDir, s.DataDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, fmt.Errorf("pgtemp: %w", err)
		}
	}
	if err := s.chownAll(); err != nil {
		return nil, err
	}

	// initdb
	out, err := s.run(ctx, initdb, "-D", s.DataDir, "-U", superuser, "--auth=trust",
		"-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
	if err != nil && strings.Contains(string(out), "--no-instructions") {
		// PostgreSQL < 14 has no --no-instructions.
		out, err = s.run(ctx, initdb, "-D", s.DataDir, "-U", superuser, "--auth=trust",
			"-E", "UTF8", "--locale=C", "--no-sync")
	}
	if err != nil {
		return nil, fmt.Errorf("pgtemp: initdb failed: %w\n%s", err, tail(out, 4096))
	}

	if err := s.writeHBA(auth); err != nil {
		return nil, err
	}
	if opts.SSLCertFile != "" {
		if err := s.copySecret(opts.SSLCertFile, "server.crt"); err != nil {
			return nil, err
		}
		if err := s.copySecret(opts.SSLKeyFile, "server.key"); err != nil {
			return nil, err
		}
	}
	origConf, err := os.ReadFile(filepath.Join(s.DataDir, "postgresql.conf"))
	if err != nil {
		return nil, fmt.Errorf("pgtemp: %w", err)
	}

	// Create the log file ourselves so the tailer can open it right away.
	if err := os.WriteFile(s.logFile, nil, 0o600); err != nil {
		return nil, fmt.Errorf("pgtemp: %w", err)
	}
	if err := s.chownAll(); err != nil {
		return nil, err
	}
	if opts.Log != nil {
		s.startTail(opts.Log)
	}
	fail := func(err error) (*Server, error) {
		s.stopTail()
		return nil, err
	}

	for attempt := 0; ; attempt++ {
		port := opts.Port
		if port == 0 {
			if port, err = pickPort(); err != nil {
				return fail(err)
			}
		}
		s.Port = port
		if err := s.writeConf(origConf, auth, opts); err != nil {
			return fail(err)
		}
		logStart := fileSize(s.logFile)
		out, err := s.run(ctx, s.pgCtl, "start", "-w", "-t", strconv.Itoa(startTimeout),
			"-D", s.DataDir, "-l", s.logFile)
		if err == nil {
			break
		}
		// Make sure nothing half-started survives.
		s.run(context.Background(), s.pgCtl, "stop", "-m", "immediate", "-w", "-D", s.DataDir)
		logTail := s.readLogFrom(logStart)
		if opts.Port == 0 && attempt < maxPortRetries && ctx.Err() == nil && portInUse(logTail) {
			continue
		}
		return fail(fmt.Errorf("pgtemp: pg_ctl start failed: %w\n%s\nserver log:\n%s",
			err, tail(out, 2048), tail(logTail, 4096)))
	}
	ok = true
	return s, nil
}

// Addr returns "127.0.0.1:port".
func (s *Server) Addr() string {
	return net.JoinHostPort(s.Host, strconv.Itoa(s.Port))
}

// DSN returns a TCP connection URL for pgx and libpq, with sslmode=disable.
// An empty password is left out; an empty db lets the server default it to the
// user name.
func (s *Server) DSN(user, password, db string) string {
	u := &url.URL{
		Scheme:   "postgres",
		Host:     s.Addr(),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	if password != "" {
		u.User = url.UserPassword(user, password)
	} else if user != "" {
		u.User = url.User(user)
	}
	return u.String()
}

// SocketDSN returns a keyword/value connection string that reaches the server
// over its Unix socket (always trusted).
func (s *Server) SocketDSN(user, db string) string {
	if user == "" {
		user = s.Superuser
	}
	if db == "" {
		db = "postgres"
	}
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable",
		quoteConnValue(s.SocketDir), s.Port, quoteConnValue(user), quoteConnValue(db))
}

// Exec runs sql as the superuser over the Unix socket, in the postgres
// database, with the simple query protocol. Several statements separated by
// semicolons run in one implicit transaction, so statements such as CREATE
// DATABASE must be sent on their own.
func (s *Server) Exec(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, s.SocketDSN(s.Superuser, "postgres"))
	if err != nil {
		return fmt.Errorf("pgtemp: connect: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol); err != nil {
		return fmt.Errorf("pgtemp: exec: %w", err)
	}
	return nil
}

// LogTail returns up to the last n bytes of the server log.
func (s *Server) LogTail(n int) string {
	return tail(s.readLogFrom(0), n)
}

// Stop shuts the server down (pg_ctl stop -m fast) and removes its temporary
// directories. It is safe to call more than once; later calls return the
// first call's result.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return s.stopErr
	}
	s.stopped = true

	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, err := s.run(ctx, s.pgCtl, "stop", "-m", "fast", "-w", "-t", "60", "-D", s.DataDir)
	if err != nil {
		// Do not leave a server running on a deleted data directory.
		s.run(context.Background(), s.pgCtl, "stop", "-m", "immediate", "-w", "-D", s.DataDir)
		errs = append(errs, fmt.Errorf("pgtemp: pg_ctl stop failed: %w\n%s\nserver log:\n%s",
			err, tail(out, 2048), s.LogTail(4096)))
	}
	s.stopTail()
	if err := os.RemoveAll(s.baseDir); err != nil {
		errs = append(errs, fmt.Errorf("pgtemp: %w", err))
	}
	s.stopErr = errors.Join(errs...)
	return s.stopErr
}

// FindBin locates a PostgreSQL server program (initdb, pg_ctl, postgres, ...):
// first on PATH, then in the highest-versioned /usr/lib/postgresql/*/bin.
func FindBin(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		if abs, err := filepath.Abs(p); err == nil {
			return abs, nil
		}
		return p, nil
	}
	for _, dir := range versionedBinDirs() {
		p := filepath.Join(dir, name)
		if isExecutable(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("pgtemp: %s not found on PATH or in /usr/lib/postgresql/*/bin "+
		"(install the PostgreSQL server, e.g. scripts/ensure-postgres.sh)", name)
}

// findServerBins returns pg_ctl and an initdb from the same installation when
// possible, so that the two never come from different major versions.
func findServerBins() (pgCtl, initdb string, err error) {
	if pgCtl, err = FindBin("pg_ctl"); err != nil {
		return "", "", err
	}
	if real, err := filepath.EvalSymlinks(pgCtl); err == nil {
		if p := filepath.Join(filepath.Dir(real), "initdb"); isExecutable(p) {
			return pgCtl, p, nil
		}
	}
	if initdb, err = FindBin("initdb"); err != nil {
		return "", "", err
	}
	return pgCtl, initdb, nil
}

// versionedBinDirs lists /usr/lib/postgresql/*/bin, highest version first.
func versionedBinDirs() []string {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	version := func(dir string) []int {
		var v []int
		for _, part := range strings.Split(filepath.Base(filepath.Dir(dir)), ".") {
			n, err := strconv.Atoi(part)
			if err != nil {
				n = -1
			}
			v = append(v, n)
		}
		return v
	}
	sort.SliceStable(dirs, func(i, j int) bool {
		a, b := version(dirs[i]), version(dirs[j])
		for k := 0; k < len(a) && k < len(b); k++ {
			if a[k] != b[k] {
				return a[k] > b[k]
			}
		}
		return len(a) > len(b)
	})
	return dirs
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// unprivilegedUser returns the "postgres" OS user, creating it if needed.
func unprivilegedUser(ctx context.Context) (*osUser, error) {
	u, err := user.Lookup(superuser)
	if err != nil {
		// Several test processes may race to create the user; look it up again
		// whatever useradd says.
		out, addErr := exec.CommandContext(ctx, "useradd", "--system",
			"--home", "/var/lib/postgresql", "--shell", "/bin/sh", superuser).CombinedOutput()
		u, err = user.Lookup(superuser)
		if err != nil {
			return nil, fmt.Errorf("pgtemp: running as root and cannot create the %q OS user "+
				"(useradd: %v: %s): %w", superuser, addErr, strings.TrimSpace(string(out)), err)
		}
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("pgtemp: uid of %q: %w", superuser, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("pgtemp: gid of %q: %w", superuser, err)
	}
	if uid == 0 {
		return nil, fmt.Errorf("pgtemp: OS user %q has uid 0", superuser)
	}
	return &osUser{uid: uint32(uid), gid: uint32(gid), home: u.HomeDir}, nil
}

// makeBaseDir creates the private temporary directory. When the server runs as
// another user every ancestor must be traversable by it, and the socket path
// must stay short (sun_path is ~107 bytes), so fall back to /tmp when the
// default temporary directory does not qualify.
func makeBaseDir(otherUser bool) (string, error) {
	parent := os.TempDir()
	if len(parent) > 60 || (otherUser && !worldTraversable(parent)) {
		parent = "/tmp"
	}
	dir, err := os.MkdirTemp(parent, "pgtemp-")
	if err != nil {
		return "", fmt.Errorf("pgtemp: %w", err)
	}
	return dir, nil
}

func worldTraversable(dir string) bool {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	for {
		fi, err := os.Stat(dir)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return true
		}
		dir = parent
	}
}

// chownAll hands the whole temporary tree to the server's OS user.
func (s *Server) chownAll() error {
	if s.runAs == nil {
		return nil
	}
	uid, gid := int(s.runAs.uid), int(s.runAs.gid)
	err := filepath.WalkDir(s.baseDir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
	if err != nil {
		return fmt.Errorf("pgtemp: chown %s: %w", s.baseDir, err)
	}
	return nil
}

// run executes a PostgreSQL program, as the unprivileged user when root, and
// returns its combined output.
func (s *Server) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.Dir = s.baseDir
	cmd.WaitDelay = 5 * time.Second
	// Drop PG* variables (PGPORT, PGDATA, ...) so they cannot override the
	// settings made here.
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") && !strings.HasPrefix(kv, "LC_ALL=") {
			env = append(env, kv)
		}
	}
	env = append(env, "LC_ALL=C")
	if s.runAs != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: s.runAs.uid, Gid: s.runAs.gid},
		}
		env = append(env, "HOME="+s.runAs.home, "USER="+superuser, "LOGNAME="+superuser)
	}
	cmd.Env = env
	err := cmd.Run()
	return out.Bytes(), err
}

func (s *Server) writeHBA(auth string) error {
	hba := fmt.Sprintf(`# written by pgtemp
local   all   all                  trust
host    all   all   127.0.0.1/32   %[1]s
host    all   all   ::1/128        %[1]s
`, auth)
	return s.writeFile("pg_hba.conf", []byte(hba))
}

func (s *Server) writeConf(orig []byte, auth string, opts Options) error {
	pwEnc := "scram-sha-256"
	if auth == "md5" {
		pwEnc = "md5"
	}
	var b bytes.Buffer
	b.Write(orig)
	fmt.Fprintf(&b, "\n# --- pgtemp settings ---\n")
	lines := []string{
		"listen_addresses = '127.0.0.1'",
		fmt.Sprintf("port = %d", s.Port),
		fmt.Sprintf("unix_socket_directories = '%s'", confQuote(s.SocketDir)),
		"fsync = off",
		"synchronous_commit = off",
		"full_page_writes = off",
		"max_connections = 200",
		"shared_buffers = 128MB",
		fmt.Sprintf("password_encryption = '%s'", pwEnc),
		"logging_collector = off",
	}
	if opts.SSLCertFile != "" {
		lines = append(lines, "ssl = on",
			"ssl_cert_file = 'server.crt'",
			"ssl_key_file = 'server.key'")
	}
	lines = append(lines, opts.Conf...)
	for _, l := range lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return s.writeFile("postgresql.conf", b.Bytes())
}

// copySecret copies src into the data directory as name, mode 0600, owned by
// the server's OS user (PostgreSQL refuses group/world-readable keys).
func (s *Server) copySecret(src, name string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("pgtemp: %w", err)
	}
	return s.writeFile(name, data)
}

func (s *Server) writeFile(name string, data []byte) error {
	p := filepath.Join(s.DataDir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		return fmt.Errorf("pgtemp: %w", err)
	}
	if err := os.Chmod(p, 0o600); err != nil {
		return fmt.Errorf("pgtemp: %w", err)
	}
	if s.runAs != nil {
		if err := os.Lchown(p, int(s.runAs.uid), int(s.runAs.gid)); err != nil {
			return fmt.Errorf("pgtemp: %w", err)
		}
	}
	return nil
}

// startTail copies the server log to w as it grows.
func (s *Server) startTail(w io.Writer) {
	s.tailStop = make(chan struct{})
	s.tailDone = make(chan struct{})
	go func() {
		defer close(s.tailDone)
		var f *os.File
		defer func() {
			if f != nil {
				f.Close()
			}
		}()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			if f == nil {
				f, _ = os.Open(s.logFile)
			}
			if f != nil {
				io.Copy(w, f)
			}
			select {
			case <-s.tailStop:
				if f != nil {
					io.Copy(w, f)
				}
				return
			case <-t.C:
			}
		}
	}()
}

func (s *Server) stopTail() {
	if s.tailStop == nil {
		return
	}
	close(s.tailStop)
	<-s.tailDone
	s.tailStop = nil
}

func (s *Server) readLogFrom(off int64) []byte {
	f, err := os.Open(s.logFile)
	if err != nil {
		return nil
	}
	defer f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return nil
	}
	b, _ := io.ReadAll(f)
	return b
}

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// pickPort is freePort; tests replace it.
var pickPort = freePort

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtemp: finding a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port, nil
}

func portInUse(log []byte) bool {
	return bytes.Contains(log, []byte("Address already in use")) ||
		bytes.Contains(log, []byte("could not create any TCP/IP sockets")) ||
		bytes.Contains(log, []byte("could not bind"))
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 && i < len(b)-1 {
			b = b[i+1:]
		}
		return "...\n" + string(b)
	}
	return string(b)
}

// confQuote escapes a value for a single-quoted postgresql.conf string.
func confQuote(s string) string {
	return strings.ReplaceAll(s, "'", "''")
}

// quoteConnValue quotes a libpq keyword/value connection string value.
func quoteConnValue(s string) string {
	if s != "" && !strings.ContainsAny(s, ` '\`) {
		return s
	}
	s = strings.ReplaceAll(s, `\`, `\\`)
	s = strings.ReplaceAll(s, `'`, `\'`)
	return "'" + s + "'"
}
