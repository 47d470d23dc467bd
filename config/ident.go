package config

import (
	"errors"
	"fmt"
	"strings"

	"github.com/pgoptimist/pgoptimist/rewrite"
)

// maxIdentifierBytes is PostgreSQL's NAMEDATALEN-1: longer identifiers are
// silently truncated by the server, so a longer name in the configuration
// would never match what the catalog holds.
const maxIdentifierBytes = 63

// parseIdentifiers splits a possibly qualified SQL name ("public.address",
// `"MyTable"`, `s."a.b"`) into its parts, as PostgreSQL stores them: unquoted
// parts folded to lower case (ASCII only, as the server does for multi-byte
// encodings), quoted parts kept verbatim with "" unescaped.
func parseIdentifiers(s string) ([]string, error) {
	if s == "" {
		return nil, errors.New("empty name")
	}
	var parts []string
	i := 0
	for {
		if i >= len(s) || s[i] == '.' {
			return nil, fmt.Errorf("empty part in %q", s)
		}
		var part string
		if s[i] == '"' {
			var b strings.Builder
			j := i + 1
			for {
				if j >= len(s) {
					return nil, fmt.Errorf("unterminated quoted identifier in %q", s)
				}
				if s[j] == '"' {
					if j+1 < len(s) && s[j+1] == '"' {
						b.WriteByte('"')
						j += 2
						continue
					}
					j++
					break
				}
				b.WriteByte(s[j])
				j++
			}
			if b.Len() == 0 {
				return nil, fmt.Errorf("zero-length quoted identifier in %q", s)
			}
			part, i = b.String(), j
		} else {
			j := i
			for j < len(s) && s[j] != '.' && s[j] != '"' {
				j++
			}
			word := s[i:j]
			if !validUnquoted(word) {
				return nil, fmt.Errorf("%q is not a valid unquoted identifier (write it in double quotes)", word)
			}
			part, i = foldIdentifier(word), j
		}
		if len(part) > maxIdentifierBytes {
			return nil, fmt.Errorf("identifier %q is longer than %d bytes (PostgreSQL would truncate it)", part, maxIdentifierBytes)
		}
		parts = append(parts, part)
		if i == len(s) {
			return parts, nil
		}
		if s[i] != '.' {
			return nil, fmt.Errorf("unexpected %q after identifier in %q", s[i:], s)
		}
		i++
	}
}

// parseIdentifier parses a single, unqualified identifier.
func parseIdentifier(s string) (string, error) {
	parts, err := parseIdentifiers(s)
	if err != nil {
		return "", err
	}
	if len(parts) != 1 {
		return "", fmt.Errorf("must be a single identifier, not a qualified name (got %q)", s)
	}
	return parts[0], nil
}

func validUnquoted(w string) bool {
	if w == "" {
		return false
	}
	for i := 0; i < len(w); i++ {
		c := w[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_', c >= 0x80:
		case i > 0 && (c >= '0' && c <= '9' || c == '$'):
		default:
			return false
		}
	}
	return true
}

func foldIdentifier(w string) string {
	b := []byte(w)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + ('a' - 'A')
		}
	}
	return string(b)
}

// QuoteIdentifier returns name (as stored by PostgreSQL) written as SQL,
// with the rewriter's quoting rules (one quoter for the whole program).
func QuoteIdentifier(name string) string { return rewrite.QuoteIdent(name) }
