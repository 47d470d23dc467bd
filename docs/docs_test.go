// Package docs holds no code: its tests keep the documentation next to
// them true to the code (every configuration key, every metric) and every
// link in the README and the docs resolving inside the repository.
package docs

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgoptimist/pgoptimist/config"
	"github.com/pgoptimist/pgoptimist/proxy"
)

// schemaKeys lists the configuration's keys from the Config struct itself
// (its mapstructure tags), so a key added to the schema is found even if
// nobody remembers the docs: scalars as "limits.max_connections", the
// tables list as "tables", and each table field as "tables[].mode".
func schemaKeys() []string {
	var keys []string
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := strings.Split(f.Tag.Get("mapstructure"), ",")[0]
			if tag == "" || tag == "-" {
				continue
			}
			key := prefix + tag
			switch {
			case f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeOf(time.Duration(0)):
				walk(f.Type, key+".")
			case f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct:
				keys = append(keys, key)
				walk(f.Type.Elem(), key+"[].")
			default:
				keys = append(keys, key)
			}
		}
	}
	walk(reflect.TypeOf(config.Config{}), "")
	return keys
}

var rowRE = regexp.MustCompile("(?m)^\\| `([a-z_.\\[\\]]+)` \\|(.*)$")

// keyRows returns configuration.md's reference rows: key -> cells after it.
func keyRows(t *testing.T) map[string][]string {
	t.Helper()
	data, err := os.ReadFile("configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string][]string{}
	for _, m := range rowRE.FindAllStringSubmatch(string(data), -1) {
		cells := strings.Split(strings.TrimSuffix(strings.TrimSpace(m[2]), "|"), " | ")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		if _, dup := rows[m[1]]; dup {
			t.Errorf("configuration.md: key %s documented twice", m[1])
		}
		rows[m[1]] = cells
	}
	return rows
}

// TestConfigurationDocumentsEveryKey fails when a key of the configuration
// schema is missing from docs/configuration.md, or documented without its
// meaning, default, environment variable or reload behaviour, or when the
// documented default or variable is not the code's.
func TestConfigurationDocumentsEveryKey(t *testing.T) {
	keys := schemaKeys()
	if len(keys) < 20 {
		t.Fatalf("found only %d keys in the schema: %v", len(keys), keys)
	}
	// The loader's own list agrees with the struct.
	for _, k := range config.Keys() {
		if !slices.Contains(keys, k) {
			t.Errorf("config.Keys() has %s, the Config struct does not", k)
		}
	}
	rows := keyRows(t)
	defaults := config.Defaults()
	for _, key := range keys {
		cells, ok := rows[key]
		if !ok {
			t.Errorf("docs/configuration.md does not document key %s", key)
			continue
		}
		if len(cells) != 4 {
			t.Errorf("%s: want 4 cells after the key (meaning, default, environment, reload), got %d: %q", key, len(cells), cells)
			continue
		}
		for i, what := range []string{"meaning", "default", "environment", "reload"} {
			if cells[i] == "" {
				t.Errorf("%s: no %s", key, what)
			}
		}
		env := config.EnvName(key)
		if strings.HasPrefix(key, "tables") {
			env = config.TablesEnv
		}
		if !strings.Contains(cells[2], "`"+env+"`") {
			t.Errorf("%s: environment cell %q does not name %s", key, cells[2], env)
		}
		if def, ok := defaultOf(defaults, key); ok && !strings.Contains(cells[1], "`"+def+"`") {
			t.Errorf("%s: default cell %q does not say `%s`", key, cells[1], def)
		}
	}
	for key := range rows {
		if !slices.Contains(keys, key) {
			t.Errorf("docs/configuration.md documents %s, which the schema does not have", key)
		}
	}
}

// defaultOf formats the default of a scalar key as the docs write it.
func defaultOf(c config.Config, key string) (string, bool) {
	v := reflect.ValueOf(c)
	for _, part := range strings.Split(key, ".") {
		t := v.Type()
		found := false
		for i := 0; i < t.NumField(); i++ {
			if strings.Split(t.Field(i).Tag.Get("mapstructure"), ",")[0] == part {
				v, found = v.Field(i), true
				break
			}
		}
		if !found {
			return "", false
		}
	}
	switch x := v.Interface().(type) {
	case string:
		if x == "" {
			return `""`, true
		}
		return x, true
	case int:
		return fmt.Sprint(x), true
	case time.Duration:
		return x.String(), true
	}
	return "", false
}

// TestOperationsDocumentsEveryMetric: every pgoptimist_* series the proxy
// exposes is in docs/operations.md's metrics table.
func TestOperationsDocumentsEveryMetric(t *testing.T) {
	data, err := os.ReadFile("operations.md")
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Defaults()
	cfg.Listen = "127.0.0.1:0"
	cfg.Tables = []config.Table{{Name: "public.address"}}
	cfg.Normalize()
	srv, err := proxy.New(&cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if _, err := srv.Metrics().WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(b.String(), "\n") {
		name, ok := strings.CutPrefix(line, "# TYPE ")
		if !ok || !strings.HasPrefix(name, "pgoptimist_") {
			continue
		}
		name = strings.Fields(name)[0]
		n++
		if !bytes.Contains(data, []byte("| `"+name+"` |")) {
			t.Errorf("docs/operations.md does not document %s", name)
		}
	}
	if n < 20 {
		t.Fatalf("only %d pgoptimist_ series exposed", n)
	}
}

var (
	linkRE     = regexp.MustCompile(`!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)
	refDefRE   = regexp.MustCompile(`(?m)^\s*\[[^\]]+\]:\s*(\S+)`)
	headingRE  = regexp.MustCompile(`(?m)^#{1,6}\s+(.+?)\s*#*\s*$`)
	fenceRE    = regexp.MustCompile("(?ms)^\\s*```.*?^\\s*```")
	codeSpanRE = regexp.MustCompile("`[^`\n]*`")
)

// anchors returns the GitHub anchors of a Markdown file's headings.
func anchors(text string) map[string]bool {
	out := map[string]bool{}
	seen := map[string]int{}
	for _, m := range headingRE.FindAllStringSubmatch(fenceRE.ReplaceAllString(text, ""), -1) {
		h := strings.ToLower(strings.ReplaceAll(m[1], "`", ""))
		var b strings.Builder
		for _, r := range h {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r > 127:
				b.WriteRune(r)
			}
		}
		a := b.String()
		if n := seen[a]; n > 0 {
			out[fmt.Sprintf("%s-%d", a, n)] = true
		} else {
			out[a] = true
		}
		seen[a]++
	}
	return out
}

// TestMarkdownLinks: every link in README.md and docs/*.md that is not a
// web address resolves to a file or directory of the repository (and to a
// heading, when it has an anchor); none leaves the repository.
func TestMarkdownLinks(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	files = append(files, filepath.Join(root, "README.md"))
	if len(files) < 4 {
		t.Fatalf("found only %v", files)
	}
	checked := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, f)
		text := string(data)
		for _, banned := range outsideNames {
			if strings.Contains(text, banned) {
				t.Errorf("%s mentions %s, which is not in the repository", rel, banned)
			}
		}
		body := codeSpanRE.ReplaceAllString(fenceRE.ReplaceAllString(text, ""), "")
		var targets []string
		for _, m := range linkRE.FindAllStringSubmatch(body, -1) {
			targets = append(targets, m[1])
		}
		for _, m := range refDefRE.FindAllStringSubmatch(body, -1) {
			targets = append(targets, m[1])
		}
		for _, target := range targets {
			if strings.HasPrefix(target, "http://") || strings.HasPrefix(target, "https://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			checked++
			path, anchor, _ := strings.Cut(target, "#")
			dest := f
			if path != "" {
				if filepath.IsAbs(path) {
					t.Errorf("%s: link %q is absolute", rel, target)
					continue
				}
				dest = filepath.Join(filepath.Dir(f), path)
				if r, err := filepath.Rel(root, dest); err != nil || strings.HasPrefix(r, "..") {
					t.Errorf("%s: link %q leaves the repository", rel, target)
					continue
				}
				if _, err := os.Stat(dest); err != nil {
					t.Errorf("%s: link %q: %v", rel, target, err)
					continue
				}
			}
			if anchor != "" {
				destText, err := os.ReadFile(dest)
				if err != nil || !strings.HasSuffix(dest, ".md") {
					t.Errorf("%s: link %q: anchor into a file that is not Markdown", rel, target)
					continue
				}
				if !anchors(string(destText))[anchor] {
					t.Errorf("%s: link %q: no heading #%s in %s", rel, target, anchor, filepath.Base(dest))
				}
			}
		}
	}
	if checked < 10 {
		t.Errorf("only %d relative links checked: is the link pattern broken?", checked)
	}
}

// outsideNames are names of files outside the repository, the designers'
// notes, that nothing in it may mention. They are spelt in two pieces so
// that this file does not mention them either.
var outsideNames = []string{".." + "/" + "shared", "DESIGN" + ".md"}

// TestNoReferenceOutsideTheRepository: no source, script, configuration or
// document of the repository points to files outside it: users have only
// the repository.
func TestNoReferenceOutsideTheRepository(t *testing.T) {
	checked := 0
	err := filepath.WalkDir("..", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case ".git", "bin", "testdata", "node_modules":
				return filepath.SkipDir
			}
			return nil
		}
		switch filepath.Ext(path) {
		case ".go", ".md", ".sh", ".yaml", ".yml", ".sql", ".service", ".json":
		default:
			if d.Name() != "Makefile" {
				return nil
			}
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		checked++
		for _, banned := range outsideNames {
			if bytes.Contains(data, []byte(banned)) {
				t.Errorf("%s mentions %s, which is not in the repository", path, banned)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 50 {
		t.Errorf("only %d files checked: is the walk broken?", checked)
	}
}
