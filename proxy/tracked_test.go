package proxy

import (
	"strings"
	"testing"

	"github.com/pgoptimist/pgoptimist/rewrite"
)

// TestVersionStoreRollbacks: a rollback puts the remembered versions back
// as the database has them: the whole transaction, to a named savepoint
// (the steps since it), or, for a savepoint not followed, by forgetting
// the rows written.
func TestVersionStoreRollbacks(t *testing.T) {
	srv := testServer()
	key := []byte("public.t\x001")
	other := []byte("public.t\x002")
	setup := func() *versionStore {
		vs := newVersionStore(10, srv.metrics, map[string]bool{"public.t": true})
		vs.set(key, "public.t", "1")
		vs.set(other, "public.t", "7")
		return vs
	}
	get := func(vs *versionStore, k []byte) string {
		v, ok := vs.lookup(string(k))
		if !ok {
			return "forgotten"
		}
		return v
	}
	steps := func(vs *versionStore, cmds ...string) {
		for _, c := range cmds {
			switch c {
			case "write":
				v, _ := incremented(get(vs, key))
				vs.ownWrite(key, "public.t", v, false)
			case "write other":
				v, _ := incremented(get(vs, other))
				vs.ownWrite(other, "public.t", v, false)
			case "ROLLBACK":
				vs.sawTag([]byte("ROLLBACK"))
				vs.ready(txIdle)
			case "COMMIT":
				vs.sawTag([]byte("COMMIT"))
				vs.ready(txIdle)
			default: // a savepoint command, answered in the block
				vs.noteCommand(c)
				tag := strings.ToUpper(strings.Fields(c)[0]) // SAVEPOINT, RELEASE, ROLLBACK
				vs.sawTag([]byte(tag))
				vs.ready(txInBlock)
			}
		}
	}
	for _, tc := range []struct {
		cmds      []string
		want, oth string
	}{
		{[]string{"write", "write", "COMMIT"}, "3", "7"},
		{[]string{"write", "write other", "ROLLBACK"}, "1", "7"},
		{[]string{"write", "SAVEPOINT s", "write", "write other", "ROLLBACK TO SAVEPOINT s"}, "2", "7"},
		{[]string{"write", "SAVEPOINT s", "write", "SAVEPOINT \"T\"", "write", "rollback to \"T\""}, "3", "7"},
		{[]string{"write", "SAVEPOINT s", "write", "SAVEPOINT t", "write", "ROLLBACK TO s", "write", "COMMIT"}, "3", "7"},
		{[]string{"SAVEPOINT s", "write", "RELEASE SAVEPOINT s", "write other", "ROLLBACK"}, "1", "7"},
		{[]string{"write", "SAVEPOINT s", "write", "RELEASE s", "ROLLBACK TO s"}, "forgotten", "7"},
		{[]string{"write", "SAVEPOINT s", "write", "ROLLBACK TO unknown"}, "forgotten", "7"},
	} {
		vs := setup()
		steps(vs, tc.cmds...)
		if got, oth := get(vs, key), get(vs, other); got != tc.want || oth != tc.oth {
			t.Errorf("%q: row 1 %s, row 2 %s; want %s, %s", tc.cmds, got, oth, tc.want, tc.oth)
		}
	}
}

// TestVersionStoreCap: least recently used rows go first, and are counted.
func TestVersionStoreCap(t *testing.T) {
	srv := testServer()
	vs := newVersionStore(2, srv.metrics, map[string]bool{"public.t": true})
	vs.set([]byte("public.t\x001"), "public.t", "1")
	vs.set([]byte("public.t\x002"), "public.t", "1")
	vs.lookup("public.t\x001") // 2 is now the least recently used
	vs.set([]byte("public.t\x003"), "public.t", "1")
	if _, ok := vs.lookup("public.t\x002"); ok {
		t.Error("the least recently used row was kept")
	}
	if _, ok := vs.lookup("public.t\x001"); !ok {
		t.Error("a recently used row was evicted")
	}
	if n := srv.metrics.evictions.get("public.t"); n != 1 {
		t.Errorf("%d evictions counted, want 1", n)
	}
}

// TestSameVersion: a version captured in text or binary form compares with
// the server's text rendering of the version written over.
func TestSameVersion(t *testing.T) {
	for _, c := range []struct {
		typ         rewrite.VersionType
		read, over  string
		same, known bool
	}{
		{rewrite.TypeInteger, "7", "7", true, true},
		{rewrite.TypeInteger, "7", "8", false, true},
		{rewrite.TypeXmin, "4294967295", "4294967295", true, true},
		{rewrite.TypeXmin, "741", "742", false, true},
		{rewrite.TypeUUID, "8f76e2dc-2130-4b04-a14d-08d24014e172", "8F76E2DC-2130-4B04-A14D-08D24014E172", true, true},
		{rewrite.TypeUUID, "8f76e2dc-2130-4b04-a14d-08d24014e172", "3074fb0e-8776-42db-9809-76470cd5ef76", false, true},
		// timestamptz: text output in another zone, and decodeParam's binary rendering.
		{rewrite.TypeTimestamp, "2026-12-04 16:21:41.495886+00", "2026-12-04 21:51:41.495886+05:30", true, true},
		{rewrite.TypeTimestamp, "2026-12-04 16:21:41.495886Z", "2026-12-04 16:21:41.495886+00", true, true},
		{rewrite.TypeTimestamp, "2026-12-04 16:21:41Z", "2026-12-04 16:21:41+00", true, true},
		{rewrite.TypeTimestamp, "2026-12-04 16:21:41.495886Z", "2026-12-04 16:21:41.495887+00", false, true},
		// timestamp without time zone, text and binary.
		{rewrite.TypeTimestamp, "2026-12-04 16:21:41.5Z", "2026-12-04 16:21:41.5", true, true},
		// Another DateStyle: not comparable, not counted.
		{rewrite.TypeTimestamp, "2026-12-04 16:21:41.5Z", "Fri Dec 04 16:21:41.5 2026 UTC", false, false},
	} {
		if same, known := sameVersion(c.typ, c.read, c.over); same != c.same || known != c.known {
			t.Errorf("%s %q vs %q: same %v known %v, want %v %v", c.typ, c.read, c.over, same, known, c.same, c.known)
		}
	}
}
