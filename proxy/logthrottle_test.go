package proxy

import (
	"testing"
	"time"
)

// TestLogThrottle: the first line passes, the next ones within the interval
// are counted, and the first line after it says how many were left out.
func TestLogThrottle(t *testing.T) {
	lt := logThrottle{interval: 10 * time.Second}
	now := time.Unix(1000, 0)
	if ok, n := lt.allow(now); !ok || n != 0 {
		t.Fatalf("first line: %v %d", ok, n)
	}
	for i := 1; i <= 5; i++ {
		if ok, _ := lt.allow(now.Add(time.Duration(i) * time.Second)); ok {
			t.Fatalf("line %d within the interval passed", i)
		}
	}
	if ok, n := lt.allow(now.Add(11 * time.Second)); !ok || n != 5 {
		t.Fatalf("after the interval: %v, %d suppressed (want 5)", ok, n)
	}
}
