package rewrite

import "strings"

// A small SQL tokenizer, good enough to estimate nesting before the text is
// handed to the parser (pg_query's C code recurses over the tree it builds and
// can overflow the thread stack on very deep input) and to find the body of a
// PREPARE. It follows PostgreSQL's lexical rules with
// standard_conforming_strings on, which is what pg_query assumes too.

type tokKind uint8

const (
	tokEOF tokKind = iota
	tokIdent
	tokQuotedIdent
	tokString
	tokNumber
	tokParam
	tokOp
	tokPunct
)

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

func isIdentStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= 0x80
}

func isIdentCont(c byte) bool {
	return isIdentStart(c) || c >= '0' && c <= '9' || c == '$'
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isOpChar(c byte) bool {
	switch c {
	case '+', '-', '*', '/', '<', '>', '=', '~', '!', '@', '#', '%', '^', '&', '|', '`', '?':
		return true
	}
	return false
}

// skipSpaceAndComments returns the index of the first byte at or after i that
// is not whitespace or part of a comment.
func skipSpaceAndComments(s string, i int) int {
	for i < len(s) {
		c := s[i]
		switch {
		case isSpace(c):
			i++
		case c == '-' && i+1 < len(s) && s[i+1] == '-':
			j := strings.IndexByte(s[i:], '\n')
			if j < 0 {
				return len(s)
			}
			i += j + 1
		case c == '/' && i+1 < len(s) && s[i+1] == '*':
			i = skipBlockComment(s, i)
		default:
			return i
		}
	}
	return i
}

// skipBlockComment skips a (nested) /* */ comment starting at i.
func skipBlockComment(s string, i int) int {
	depth := 0
	for i < len(s) {
		if s[i] == '/' && i+1 < len(s) && s[i+1] == '*' {
			depth++
			i += 2
			continue
		}
		if s[i] == '*' && i+1 < len(s) && s[i+1] == '/' {
			depth--
			i += 2
			if depth == 0 {
				return i
			}
			continue
		}
		i++
	}
	return len(s)
}

// skipQuoted skips a quoted string or identifier whose opening quote q is at
// i; a doubled quote stands for itself. With backslash set, a backslash
// escapes the next byte (E'...' strings).
func skipQuoted(s string, i int, q byte, backslash bool) int {
	i++
	for i < len(s) {
		c := s[i]
		if backslash && c == '\\' {
			i += 2
			continue
		}
		if c == q {
			if i+1 < len(s) && s[i+1] == q {
				i += 2
				continue
			}
			return i + 1
		}
		i++
	}
	return len(s)
}

// dollarTag returns the end of a dollar-quote delimiter ($tag$ or $$) starting
// at i, or -1 when there is none.
func dollarTag(s string, i int) int {
	j := i + 1
	if j < len(s) && s[j] == '$' {
		return j + 1
	}
	if j >= len(s) || !isIdentStart(s[j]) {
		return -1
	}
	for j < len(s) && s[j] != '$' {
		c := s[j]
		if !(isIdentStart(c) || isDigit(c)) {
			return -1
		}
		j++
	}
	if j >= len(s) {
		return -1
	}
	return j + 1
}

// nextToken returns the token that starts at or after i: its kind and its
// [start, end) range. At the end of the text it returns tokEOF.
func nextToken(s string, i int) (tokKind, int, int) {
	i = skipSpaceAndComments(s, i)
	if i >= len(s) {
		return tokEOF, len(s), len(s)
	}
	start := i
	c := s[i]
	switch {
	case isIdentStart(c):
		j := i + 1
		for j < len(s) && isIdentCont(s[j]) {
			j++
		}
		if j < len(s) {
			n := j - i
			switch {
			case s[j] == '\'' && n == 1 && (c == 'e' || c == 'E'):
				return tokString, start, skipQuoted(s, j, '\'', true)
			case s[j] == '\'' && n == 1 && strings.IndexByte("bBxXnN", c) >= 0:
				return tokString, start, skipQuoted(s, j, '\'', false)
			case s[j] == '&' && n == 1 && (c == 'u' || c == 'U') && j+1 < len(s) && s[j+1] == '\'':
				return tokString, start, skipQuoted(s, j+1, '\'', false)
			case s[j] == '&' && n == 1 && (c == 'u' || c == 'U') && j+1 < len(s) && s[j+1] == '"':
				return tokQuotedIdent, start, skipQuoted(s, j+1, '"', false)
			}
		}
		return tokIdent, start, j
	case c == '\'':
		return tokString, start, skipQuoted(s, i, '\'', false)
	case c == '"':
		return tokQuotedIdent, start, skipQuoted(s, i, '"', false)
	case c == '$':
		if i+1 < len(s) && isDigit(s[i+1]) {
			j := i + 1
			for j < len(s) && isDigit(s[j]) {
				j++
			}
			return tokParam, start, j
		}
		if e := dollarTag(s, i); e > 0 {
			tag := s[i:e]
			k := strings.Index(s[e:], tag)
			if k < 0 {
				return tokString, start, len(s)
			}
			return tokString, start, e + k + len(tag)
		}
		return tokPunct, start, i + 1
	case isDigit(c) || c == '.' && i+1 < len(s) && isDigit(s[i+1]):
		j := i + 1
		for j < len(s) {
			d := s[j]
			if isDigit(d) || d == '.' || d == '_' || d >= 'a' && d <= 'z' || d >= 'A' && d <= 'Z' {
				if (d == 'e' || d == 'E') && j+2 < len(s) && (s[j+1] == '+' || s[j+1] == '-') && isDigit(s[j+2]) {
					j += 2
				}
				j++
				continue
			}
			break
		}
		return tokNumber, start, j
	case c == ':':
		if i+1 < len(s) && s[i+1] == ':' {
			return tokOp, start, i + 2
		}
		return tokPunct, start, i + 1
	case isOpChar(c):
		j := i + 1
		for j < len(s) && isOpChar(s[j]) {
			if (s[j] == '-' && j+1 < len(s) && s[j+1] == '-') || (s[j] == '/' && j+1 < len(s) && s[j+1] == '*') {
				break
			}
			j++
		}
		return tokOp, start, j
	}
	return tokPunct, start, i + 1
}

// keyword reports whether the identifier token s[a:b] is the keyword kw
// (given in lower case), ASCII case-insensitively.
func keyword(s string, a, b int, kw string) bool {
	if b-a != len(kw) {
		return false
	}
	for k := 0; k < len(kw); k++ {
		c := s[a+k]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != kw[k] {
			return false
		}
	}
	return true
}

// depthLevel is one open bracket (or CASE) while estimating nesting.
type depthLevel struct {
	isCase bool
	ops    int // operator-like tokens since the last ',' ';' AND OR
	joins  int // JOINs since the last ',' ';'
	setops int // UNION/INTERSECT/EXCEPT since the last ';'
}

// exceedsDepth estimates how deeply the parse tree of s nests and reports
// whether the estimate exceeds max. Brackets and CASE open a level;
// left-associative chains (binary and postfix operators, casts, JOINs, set
// operations) deepen the tree without any bracket, so every such token adds
// one until a ',' (or AND/OR, which the parser flattens) closes the chain.
// The estimate errs on the deep side.
func exceedsDepth(s string, max int) bool {
	var stack []depthLevel
	stack = append(stack, depthLevel{})
	cur := 1
	i := 0
	for {
		k, a, b := nextToken(s, i)
		if k == tokEOF {
			return false
		}
		i = b
		top := &stack[len(stack)-1]
		switch k {
		case tokPunct:
			switch s[a] {
			case '(', '[':
				stack = append(stack, depthLevel{})
				cur++
			case ')', ']':
				if len(stack) > 1 {
					cur -= 1 + top.ops + top.joins + top.setops
					stack = stack[:len(stack)-1]
				}
			case ',':
				cur -= top.ops + top.joins
				top.ops, top.joins = 0, 0
			case ';':
				cur -= top.ops + top.joins + top.setops
				top.ops, top.joins, top.setops = 0, 0, 0
			}
		case tokOp:
			top.ops++
			cur++
		case tokIdent:
			switch {
			case keyword(s, a, b, "and") || keyword(s, a, b, "or"):
				cur -= top.ops
				top.ops = 0
			case keyword(s, a, b, "case"):
				stack = append(stack, depthLevel{isCase: true})
				cur++
			case keyword(s, a, b, "end"):
				if top.isCase && len(stack) > 1 {
					cur -= 1 + top.ops + top.joins + top.setops
					stack = stack[:len(stack)-1]
				}
			case keyword(s, a, b, "join"):
				top.joins++
				cur++
			case keyword(s, a, b, "union") || keyword(s, a, b, "intersect") || keyword(s, a, b, "except"):
				top.setops++
				cur++
			case keyword(s, a, b, "not") || keyword(s, a, b, "is") || keyword(s, a, b, "isnull") ||
				keyword(s, a, b, "notnull") || keyword(s, a, b, "in") || keyword(s, a, b, "like") ||
				keyword(s, a, b, "ilike") || keyword(s, a, b, "similar") || keyword(s, a, b, "between") ||
				keyword(s, a, b, "collate") || keyword(s, a, b, "at") || keyword(s, a, b, "overlaps") ||
				keyword(s, a, b, "operator"):
				top.ops++
				cur++
			}
		}
		if cur > max {
			return true
		}
	}
}

// prepareBody returns the text of the statement prepared by the PREPARE
// statement text s (everything after the first top-level AS), or "" when it
// cannot be found.
func prepareBody(s string) string {
	depth := 0
	i := 0
	for {
		k, a, b := nextToken(s, i)
		if k == tokEOF {
			return ""
		}
		i = b
		switch k {
		case tokPunct:
			switch s[a] {
			case '(', '[':
				depth++
			case ')', ']':
				depth--
			}
		case tokIdent:
			if depth == 0 && keyword(s, a, b, "as") {
				return trimStatement(s[b:])
			}
		}
	}
}

// trimStatement strips surrounding whitespace and trailing semicolons.
func trimStatement(s string) string {
	for {
		s = strings.TrimFunc(s, func(r rune) bool { return r < 0x80 && isSpace(byte(r)) })
		if !strings.HasSuffix(s, ";") {
			return s
		}
		s = s[:len(s)-1]
	}
}
