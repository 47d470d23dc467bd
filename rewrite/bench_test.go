package rewrite

import (
	"strconv"
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
