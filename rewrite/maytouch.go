package rewrite

import "strings"

// lower folds ASCII upper-case letters; every other byte maps to itself.
var lower = func() (t [256]byte) {
	for i := range t {
		t[i] = byte(i)
		if i >= 'A' && i <= 'Z' {
			t[i] = byte(i) + 'a' - 'A'
		}
	}
	return t
}()

// matcher is a case-insensitive (ASCII) multi-substring test.
//
// With needles of at least 3 bytes it runs Wu-Manber: it slides a window of
// the shortest needle's length over the text and looks only at the window's
// last two bytes; a table says how far the window may jump before any needle
// could end inside it (usually the whole window), so an ordinary statement is
// skimmed, not read byte by byte. Shorter needles fall back to a table of
// the byte pairs that begin some needle, tested at every position. Every
// candidate is compared in full.
type matcher struct {
	minLen  int
	shift   [1 << 12]uint8 // Wu-Manber shifts by hashed folded byte pair
	pairs   [1 << 16 / 64]uint64
	byFirst [256][]string // needles (folded) by their first byte
	any     bool
}

// keywordNeedles make every PREPARE, EXECUTE, DEALLOCATE and DISCARD
// statement reach the parser.
var keywordNeedles = []string{"prepare", "execute", "deallocate", "discard"}

func newMatcher(tables []string) *matcher {
	return newNeedleMatcher(tables, keywordNeedles)
}

// newTableMatcher matches the table names only.
func newTableMatcher(tables []string) *matcher {
	return newNeedleMatcher(tables, nil)
}

func newNeedleMatcher(tables, keywords []string) *matcher {
	m := &matcher{}
	var needles []string
	seen := map[string]bool{}
	add := func(n string) {
		n = foldASCII(n)
		if n == "" || seen[n] {
			return
		}
		seen[n] = true
		needles = append(needles, n)
	}
	for _, t := range tables {
		add(t)
		if strings.Contains(t, `"`) {
			add(strings.ReplaceAll(t, `"`, `""`)) // as written inside a quoted identifier
		}
	}
	for _, k := range keywords {
		add(k)
	}
	if len(needles) == 0 {
		return m
	}
	m.minLen = len(needles[0])
	for _, n := range needles {
		m.any = true
		m.byFirst[n[0]] = append(m.byFirst[n[0]], n)
		m.minLen = min(m.minLen, len(n))
		if len(n) == 1 {
			for b := 0; b < 256; b++ {
				m.setPair(n[0], byte(b))
			}
		} else {
			m.setPair(n[0], n[1])
		}
	}
	if m.minLen >= 3 {
		mm := min(m.minLen, 255)
		for i := range m.shift {
			m.shift[i] = uint8(mm - 1)
		}
		for _, n := range needles {
			for j := 1; j < mm; j++ {
				h := pairHash(n[j-1], n[j])
				if s := uint8(mm - 1 - j); s < m.shift[h] {
					m.shift[h] = s
				}
			}
		}
		m.minLen = mm
	}
	return m
}

// pairHash hashes a byte pair for the shift table. OR-ing 0x20 folds ASCII
// letters without a table lookup (it merges some other bytes too, which only
// makes shifts shorter, never wrong).
func pairHash(a, b byte) uint { return (uint(a|0x20)<<6 ^ uint(b|0x20)) & (1<<12 - 1) }

func (m *matcher) setPair(a, b byte) {
	k := uint(a)<<8 | uint(b)
	m.pairs[k>>6] |= 1 << (k & 63)
}

func foldASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		b[i] = lower[c]
	}
	return string(b)
}

// match reports whether s may name a guarded table: it contains a needle
// (ignoring ASCII case) or a U&"..." identifier, which can spell any name.
func (m *matcher) match(s string) bool {
	if unicodeIdent(s) {
		return true
	}
	if !m.any || len(s) == 0 {
		return false
	}
	if m.minLen >= 3 {
		return m.wuManber(s)
	}
	return m.pairScan(s)
}

// unicodeIdent reports whether s contains u&" (any case).
func unicodeIdent(s string) bool {
	for {
		k := strings.IndexByte(s, '&')
		if k < 0 {
			return false
		}
		if k > 0 && lower[s[k-1]] == 'u' && k+1 < len(s) && s[k+1] == '"' {
			return true
		}
		s = s[k+1:]
	}
}

func (m *matcher) wuManber(s string) bool {
	n := len(s)
	last := m.minLen - 1
	for pos := last; pos < n; {
		sh := m.shift[pairHash(s[pos-1], s[pos])]
		if sh > 0 {
			pos += int(sh)
			continue
		}
		if m.at(s, pos-last) {
			return true
		}
		pos++
	}
	return false
}

func (m *matcher) pairScan(s string) bool {
	n := len(s)
	prev := uint(lower[s[0]])
	for i := 1; i <= n; i++ {
		var next uint
		if i < n {
			next = uint(lower[s[i]])
		}
		k := prev<<8 | next
		if m.pairs[k>>6]&(1<<(k&63)) != 0 && m.at(s, i-1) {
			return true
		}
		prev = next
	}
	return false
}

// at reports whether a needle starts at s[i:].
func (m *matcher) at(s string, i int) bool {
	rest := s[i:]
	for _, nd := range m.byFirst[lower[s[i]]] {
		if len(nd) > len(rest) {
			continue
		}
		ok := true
		for j := 1; j < len(nd); j++ {
			if lower[rest[j]] != nd[j] {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// NeedsPlan is MayTouch with a fast path for reads: false means Plan would
// leave the text unchanged with no guarded statement, so it can be
// forwarded as is. It is false when MayTouch is, and also for a single
// read-only statement (readOnly) that names no table of a tracked policy
// (tracked, required, observe: their reads are planned, to capture
// versions). It may answer true for text that turns out to be unguarded. It
// does not allocate.
func (r *Rewriter) NeedsPlan(sql string) bool {
	if !r.match.match(sql) {
		return false
	}
	return !readOnly(sql) || r.tracking && r.trackedMatch.match(sql)
}

// NeedsPlanUncaptured is NeedsPlan for text whose reads would capture
// nothing worth keeping (an autocommit read whose captures are forgotten
// when it completes): a single read-only statement is not planned, tracked
// table or not. It does not allocate.
func (r *Rewriter) NeedsPlanUncaptured(sql string) bool {
	return r.match.match(sql) && !readOnly(sql)
}

// ReadOnly reports whether sql is a single statement that writes nothing
// (see readOnly): for text NeedsPlan wants planned, planning would only add
// the columns whose versions its reads capture. It does not allocate.
func ReadOnly(sql string) bool { return readOnly(sql) }

// readOnly reports whether s is a single statement that writes nothing:
// after leading whitespace and comments it starts with SELECT, VALUES, TABLE
// or SHOW; no ';' is followed by anything but more ';' (comments and
// whitespace aside); and no keyword that writes occurs anywhere: INTO
// (SELECT INTO creates a table), INSERT, DELETE, MERGE, or UPDATE other
// than in a locking clause (FOR UPDATE, FOR NO KEY UPDATE). A WITH in front
// (data-modifying CTEs) is no read.
func readOnly(s string) bool {
	k, a, b := nextToken(s, 0)
	if k != tokIdent || !(keyword(s, a, b, "select") || keyword(s, a, b, "values") ||
		keyword(s, a, b, "table") || keyword(s, a, b, "show")) {
		return false
	}
	ended := false // a ';' ended the statement
	lock := false  // the previous token was FOR or KEY: an UPDATE there locks rows
	for i := b; ; {
		k, a, b = nextToken(s, i)
		if k == tokEOF {
			return true
		}
		i = b
		semi := k == tokPunct && s[a] == ';'
		if ended && !semi {
			return false
		}
		ended = ended || semi
		wasLock := lock
		lock = false
		if k != tokIdent {
			continue
		}
		switch b - a {
		case 3:
			lock = keyword(s, a, b, "for") || keyword(s, a, b, "key")
		case 4:
			if keyword(s, a, b, "into") {
				return false
			}
		case 5:
			if keyword(s, a, b, "merge") {
				return false
			}
		case 6:
			if keyword(s, a, b, "insert") || keyword(s, a, b, "delete") || keyword(s, a, b, "update") && !wasLock {
				return false
			}
		}
	}
}
