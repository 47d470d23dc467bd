package integration

import (
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgoptimist/pgoptimist/config"
	"github.com/pgoptimist/pgoptimist/internal/pgtemp"
)

const hostileSetup = `CREATE TABLE guarded_t (id int PRIMARY KEY, v text, version int NOT NULL DEFAULT 1);
INSERT INTO guarded_t (id, v) SELECT g, 'v' || g FROM generate_series(1, 100) g;`

// hostileOutcome is how the attacked connection must end.
type hostileOutcome int

const (
	// hostileFatal: a FATAL 08P01 ErrorResponse, then the connection closes.
	hostileFatal hostileOutcome = iota
	// hostileError: the server judged the message (the proxy relays it
	// unread): ERROR 08P01, ReadyForQuery, and the session goes on.
	hostileError
	// hostileClosed: the connection closes; a FATAL 08P01 may come first.
	hostileClosed
)

func (o hostileOutcome) String() string {
	return [...]string{"FATAL 08P01 and close", "ERROR 08P01 and the session goes on", "closed"}[o]
}

// hostileCase is one malformed message and how to deliver it.
type hostileCase struct {
	name string
	// attack sends the message on a raw connection through addr (with a
	// trust startup unless it does its own) and returns the connection.
	attack func(t *testing.T, addr, db string) *relayRaw
	// want is the expected outcome without and with a guarded table.
	plain, guarded hostileOutcome
	scram          bool // needs a SCRAM server
}

func hostileInt16(v int16) []byte { return binary.BigEndian.AppendUint16(nil, uint16(v)) }
func hostileInt32(v int32) []byte { return binary.BigEndian.AppendUint32(nil, uint32(v)) }

func hostileCases() []hostileCase {
	afterStartup := func(raw []byte) func(t *testing.T, addr, db string) *relayRaw {
		return func(t *testing.T, addr, db string) *relayRaw {
			r := relayRawConnect(t, addr, db)
			r.writeRaw(raw)
			return r
		}
	}
	return []hostileCase{
		{
			// The proxy relays Query unread when nothing is guarded; the
			// server then rejects the missing string terminator.
			name:   "empty_query",
			attack: afterStartup([]byte{'Q', 0, 0, 0, 4}),
			plain:  hostileError, guarded: hostileFatal,
		},
		{
			name: "empty_copyfail",
			attack: func(t *testing.T, addr, db string) *relayRaw {
				r := relayRawConnect(t, addr, db)
				r.fe.Send(&pgproto3.Query{String: "COPY guarded_t (id, v) FROM STDIN"})
				if err := r.fe.Flush(); err != nil {
					t.Fatal(err)
				}
				if m := r.receive(); fmt.Sprintf("%T", m) != "*pgproto3.CopyInResponse" {
					t.Fatalf("want CopyInResponse, got %T", m)
				}
				r.writeRaw([]byte{'f', 0, 0, 0, 4})
				return r
			},
			plain: hostileError, guarded: hostileError,
		},
		{
			name:  "short_sasl_initial_response",
			scram: true,
			attack: func(t *testing.T, addr, db string) *relayRaw {
				r := relayDial(t, addr)
				r.startup(hostileScramUser, db)
				if m := r.receive(); fmt.Sprintf("%T", m) != "*pgproto3.AuthenticationSASL" {
					t.Fatalf("want AuthenticationSASL, got %T", m)
				}
				// The mechanism, then 3 of the 4 bytes of the data length.
				r.writeRaw(relayFrame('p', []byte("SCRAM-SHA-256\x00\x00\x00\x00")))
				return r
			},
			plain: hostileFatal, guarded: hostileFatal,
		},
		{
			name: "bind_negative_parameter_length",
			attack: func(t *testing.T, addr, db string) *relayRaw {
				r := relayRawConnect(t, addr, db)
				// A guarded statement, so that with a guarded table the proxy
				// decodes the Bind.
				r.fe.Send(&pgproto3.Parse{Query: "UPDATE guarded_t SET v = $1 WHERE id = $2 AND version = $3"})
				r.fe.Send(&pgproto3.Flush{})
				if err := r.fe.Flush(); err != nil {
					t.Fatal(err)
				}
				if m := r.receive(); fmt.Sprintf("%T", m) != "*pgproto3.ParseComplete" {
					t.Fatalf("want ParseComplete, got %T %+v", m, m)
				}
				var body []byte
				body = append(body, 0, 0)                // portal "", statement ""
				body = append(body, hostileInt16(0)...)  // no parameter format codes
				body = append(body, hostileInt16(3)...)  // 3 parameters
				body = append(body, hostileInt32(-5)...) // length -5
				body = append(body, "abc"...)
				body = append(body, hostileInt16(0)...) // no result format codes
				r.writeRaw(append(relayFrame('B', body), 'S', 0, 0, 0, 4))
				return r
			},
			plain: hostileError, guarded: hostileFatal,
		},
		{
			name:   "short_function_call",
			attack: afterStartup(relayFrame('F', []byte{0, 0})),
			plain:  hostileError, guarded: hostileError,
		},
		{
			name:   "garbage_type",
			attack: afterStartup([]byte{'z', 0, 0, 0, 4}),
			plain:  hostileFatal, guarded: hostileFatal,
		},
		{
			name:   "negative_length",
			attack: afterStartup([]byte{'Q', 0xff, 0xff, 0xff, 0xf0, 'S', 'E', 'L'}),
			plain:  hostileFatal, guarded: hostileFatal,
		},
		{
			name:   "length_below_four",
			attack: afterStartup([]byte{'S', 0, 0, 0, 2}),
			plain:  hostileFatal, guarded: hostileFatal,
		},
		{
			name: "startup_unterminated_parameters",
			attack: func(t *testing.T, addr, db string) *relayRaw {
				r := relayDial(t, addr)
				pkt := append(hostileInt32(0), 0, 3, 0, 0)
				pkt = append(pkt, "user\x00postgres"...)
				binary.BigEndian.PutUint32(pkt, uint32(len(pkt)))
				r.writeRaw(pkt)
				return r
			},
			plain: hostileFatal, guarded: hostileFatal,
		},
	}
}

const hostileScramUser, hostileScramPassword = "hostile_scram", "hostile-secret"

func TestHostile(t *testing.T) {
	t.Parallel()
	db := newDatabase(t, hostileSetup)
	scram := authStartServer(t, pgtemp.Options{Auth: "scram-sha-256"})
	authCreateUser(t, scram, hostileScramUser, hostileScramPassword, "SCRAM-SHA-256$")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := scram.Exec(ctx, hostileSetup+" GRANT ALL ON guarded_t TO "+hostileScramUser); err != nil {
		t.Fatal(err)
	}

	seq := 0
	for _, tc := range hostileCases() {
		for _, guarded := range []bool{false, true} {
			name := tc.name + "/plain"
			want := tc.plain
			if guarded {
				name, want = tc.name+"/guarded", tc.guarded
			}
			seq++
			id := seq // the bystander's row, its own to avoid lock waits
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				upstream, database, user, password := pg.Addr(), db, "postgres", ""
				if tc.scram {
					upstream, database, user, password = scram.Addr(), "postgres", hostileScramUser, hostileScramPassword
				}
				var tables []config.Table
				if guarded {
					tables = []config.Table{{Name: "public.guarded_t"}}
				}
				p := startProxy(t, newConfig(t, upstream, tables...))
				relayNoPanics(t, p)
				url := dsn(p.Addr, user, password, database)
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()

				// A bystander session, open before the attack, mid-transaction
				// with a guarded statement prepared.
				by, err := pgx.Connect(ctx, url)
				if err != nil {
					t.Fatal(err)
				}
				defer by.Close(ctx)
				if _, err := by.Exec(ctx, "BEGIN"); err != nil {
					t.Fatal(err)
				}
				if _, err := by.Prepare(ctx, "upd", "UPDATE guarded_t SET v = $1 WHERE id = $2 AND version = $3"); err != nil {
					t.Fatal(err)
				}

				r := tc.attack(t, p.Addr, database)
				end := r.drain()
				hostileCheck(t, r, end, want)

				// The bystander goes on.
				var n int
				if err := by.QueryRow(ctx, "SELECT count(*) FROM guarded_t").Scan(&n); err != nil || n != 100 {
					t.Errorf("bystander after the attack: %d, %v", n, err)
				}
				if tag, err := by.Exec(ctx, "upd", "bystander", id, 1); err != nil || tag.RowsAffected() != 1 {
					t.Errorf("bystander's guarded update: %v, %v", tag, err)
				}
				if _, err := by.Exec(ctx, "ROLLBACK"); err != nil {
					t.Errorf("bystander rollback: %v", err)
				}
				// And a new session works.
				c, err := pgx.Connect(ctx, url)
				if err != nil {
					t.Fatalf("new connection after the attack: %v", err)
				}
				defer c.Close(ctx)
				var one int
				if err := c.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
					t.Errorf("new session after the attack: %v", err)
				}
			})
		}
	}
}

// hostileCheck checks how the attacked connection ended.
func hostileCheck(t *testing.T, r *relayRaw, end relayEnd, want hostileOutcome) {
	t.Helper()
	desc := fmt.Sprintf("err=%+v eof=%v ready=%v readErr=%v other=%v", end.Err, end.EOF, end.Ready, end.ReadErr, end.Messages)
	t.Logf("attacked connection: %s", desc)
	if end.ReadErr != nil {
		t.Fatalf("want %v; read error: %s", want, desc)
	}
	if end.Err != nil && end.Err.Code != "08P01" {
		t.Errorf("want %v; error code %s (%s)", want, end.Err.Code, end.Err.Message)
	}
	switch want {
	case hostileFatal:
		if end.Err == nil || end.Err.Severity != "FATAL" || end.Ready || !end.EOF {
			t.Errorf("want %v, got %s", want, desc)
		}
	case hostileClosed:
		if end.Ready || !end.EOF || (end.Err != nil && end.Err.Severity != "FATAL") {
			t.Errorf("want %v, got %s", want, desc)
		}
	case hostileError:
		if end.Err == nil || end.Err.Severity != "ERROR" || !end.Ready {
			t.Fatalf("want %v, got %s", want, desc)
		}
		// The session is in step: a query gets its own answer.
		r.fe.Send(&pgproto3.Query{String: "SELECT 'still here'"})
		if err := r.fe.Flush(); err != nil {
			t.Fatal(err)
		}
		var got []string
		for {
			m := r.receive()
			switch m := m.(type) {
			case *pgproto3.DataRow:
				got = append(got, string(m.Values[0]))
			case *pgproto3.ErrorResponse:
				t.Fatalf("query after the hostile message: %s %s", m.Code, m.Message)
			}
			if _, ok := m.(*pgproto3.ReadyForQuery); ok {
				break
			}
		}
		if strings.Join(got, ",") != "still here" {
			t.Errorf("query after the hostile message returned %q", got)
		}
	}
}
