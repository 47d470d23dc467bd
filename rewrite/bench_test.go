package rewrite

import (
	"strconv"
	"sync/atomic"
	"testing"
)

func benchPolicies() []Policy {
	return []Policy{
		{Schema: "public", Table: "address", Column: "version", Type: TypeInteger, Key: []string{"id"}, Update: true, Delete: true},
		{Schema: "public", Table: "invoice", Column: "lock_version", Type: TypeInteger, Key: []string{"id"}, Update: true, Delete: true},
		{Schema: "public", Table: "account", Column: "xmin", Type: TypeXmin, Key: []string{"id"}, Update: true, Delete: true},
	}
}

// A typical 100-byte SELECT that touches no guarded table.
const missSQL = "SELECT c.id, c.name, c.email FROM customers c WHERE c.tenant_id = $1 AND c.id = $2 ORDER BY c.name"

func BenchmarkMayTouchMiss(b *testing.B) {
	r := New(benchPolicies(), Options{})
	b.SetBytes(int64(len(missSQL)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if r.MayTouch(missSQL) {
			b.Fatal("hit")
		}
	}
}

func BenchmarkMayTouchHit(b *testing.B) {
	r := New(benchPolicies(), Options{})
	sql := "UPDATE address SET state = $1, county = $2 WHERE id = $3 AND version = $4"
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if !r.MayTouch(sql) {
			b.Fatal("miss")
		}
	}
}

func BenchmarkPlanCold(b *testing.B) {
	r := New(benchPolicies(), Options{})
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		sql := "UPDATE address SET state = $1, county = $2 WHERE id = $3 AND version = " + strconv.Itoa(i)
		if _, err := r.Plan(sql, "public"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPlanColdUnguarded(b *testing.B) {
	r := New(benchPolicies(), Options{})
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		sql := missSQL + " LIMIT " + strconv.Itoa(i)
		if _, err := r.Plan(sql, "public"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPlanCached(b *testing.B) {
	r := New(benchPolicies(), Options{})
	sql := "UPDATE address SET state = $1, county = $2 WHERE id = $3 AND version = $4"
	if _, err := r.Plan(sql, "public"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := r.Plan(sql, "public"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPlanCachedParallel(b *testing.B) {
	r := New(benchPolicies(), Options{})
	sql := "UPDATE address SET state = $1, county = $2 WHERE id = $3 AND version = $4"
	if _, err := r.Plan(sql, "public"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := r.Plan(sql, "public"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// Simple-protocol texts: the same statement with other literals each time.
func literalUpdate(i int) string {
	return "UPDATE address SET state = 'NC', county = 'Guilford' WHERE id = " + strconv.Itoa(i) + " AND version = 7"
}

func benchLiteralVariant(b *testing.B, direct bool) {
	r := New(benchPolicies(), Options{})
	r.direct = direct
	if _, err := r.Plan(literalUpdate(-1), "public"); err != nil { // warm-up: builds the template
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p, err := r.Plan(literalUpdate(i), "public")
		if err != nil || !p.Changed {
			b.Fatal(err)
		}
	}
}

// A guarded UPDATE with a different id literal each iteration.
func BenchmarkPlanLiteralVariant(b *testing.B) { benchLiteralVariant(b, false) }

// The same without literal normalization (each text parsed and deparsed).
func BenchmarkPlanLiteralVariantDirect(b *testing.B) { benchLiteralVariant(b, true) }

func BenchmarkPlanLiteralVariantParallel(b *testing.B) {
	r := New(benchPolicies(), Options{})
	if _, err := r.Plan(literalUpdate(-1), "public"); err != nil {
		b.Fatal(err)
	}
	var n atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := r.Plan(literalUpdate(int(n.Add(1))), "public"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// A new shape each iteration (another column name): the first text of a
// shape builds its template and checks it against the text's own plan.
func benchLiteralNewShape(b *testing.B, direct bool) {
	r := New(benchPolicies(), Options{})
	r.direct = direct
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		sql := "UPDATE address SET c" + strconv.Itoa(i) + " = 'NC' WHERE id = 5 AND version = 7"
		if _, err := r.Plan(sql, "public"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPlanLiteralNewShape(b *testing.B)       { benchLiteralNewShape(b, false) }
func BenchmarkPlanLiteralNewShapeDirect(b *testing.B) { benchLiteralNewShape(b, true) }

// A SELECT on a guarded table (simple protocol, inlined id): NeedsPlan
// lets the proxy forward it without planning.
const selectGuarded = "SELECT version, state, county FROM address WHERE id = 48213 ORDER BY id LIMIT 1"

func BenchmarkNeedsPlanSelect(b *testing.B) {
	r := New(benchPolicies(), Options{})
	b.SetBytes(int64(len(selectGuarded)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if r.NeedsPlan(selectGuarded) {
			b.Fatal("needs a plan")
		}
	}
}

func BenchmarkMayTouchSelect(b *testing.B) {
	r := New(benchPolicies(), Options{})
	b.SetBytes(int64(len(selectGuarded)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if !r.MayTouch(selectGuarded) {
			b.Fatal("miss")
		}
	}
}

// Tracked reads with inlined keys (simple protocol): planned from the
// literal template, as the proxy would for every such SELECT.
func BenchmarkPlanTrackedReadLiteral(b *testing.B) {
	ps := benchPolicies()
	ps[0].Mode = ModeTracked
	r := New(ps, Options{Tracking: true})
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		sql := "SELECT state, county FROM address WHERE id = " + strconv.Itoa(i%100000)
		if _, err := r.Plan(sql, "public"); err != nil {
			b.Fatal(err)
		}
	}
}

// A tracked update with an inlined key: its injection comes from the
// template too.
func BenchmarkPlanTrackedUpdateLiteral(b *testing.B) {
	ps := benchPolicies()
	ps[0].Mode = ModeTracked
	r := New(ps, Options{Tracking: true})
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		sql := "UPDATE address SET county = 'x' WHERE id = " + strconv.Itoa(i%100000)
		p, err := r.Plan(sql, "public")
		if err != nil {
			b.Fatal(err)
		}
		if p.Statements[0].Inject == nil {
			b.Fatal("no injection")
		}
	}
}
