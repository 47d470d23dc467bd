package main

import (
	"fmt"
	"strings"

	"github.com/pgoptimist/pgoptimist/config"
	"github.com/pgoptimist/pgoptimist/proxy"
	"github.com/pgoptimist/pgoptimist/rewrite"
	"github.com/spf13/cobra"
)

func rewriteCmd() *cobra.Command {
	var searchPath string
	cmd := &cobra.Command{
		Use:   "rewrite 'SQL'",
		Short: "Show what a statement becomes under the configured table policies, and why",
		Long: `rewrite prints the statement the proxy would send for SQL, statement by
statement: the guarded table, the increment added, the version predicate found
(or not), the mode, and whether a zero-row result would be a stale-record error.
It needs no database: a version column type not set in the configuration is
assumed to be integer (the proxy discovers it from the catalog).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			var policies []rewrite.Policy
			for _, t := range cfg.Tables {
				assumed := ""
				if t.Type == "" && t.VersionColumn() != "xmin" {
					assumed = "integer"
				}
				p, ok := proxy.PolicyFromConfig(t, assumed, nil)
				if !ok {
					fmt.Fprintf(out, "-- table %s: version type %q not supported; not guarded\n", t.Name, t.Type)
					continue
				}
				if assumed != "" {
					fmt.Fprintf(out, "-- table %s: type not configured, assuming integer\n", p.QualifiedName())
				}
				policies = append(policies, p)
			}
			rw := rewrite.New(policies, rewrite.Options{MaxSQLBytes: cfg.Limits.MaxSQLBytes})
			sql := args[0]
			if !rw.MayTouch(sql) {
				fmt.Fprintln(out, "-- no guarded table named: forwarded byte for byte, never parsed")
				fmt.Fprintln(out, sql)
				return nil
			}
			plan, err := rw.Plan(sql, searchPath)
			if err != nil {
				fmt.Fprintf(out, "-- cannot parse: %v\n-- guard.on_parse_error is %s: the statement is %s\n", err, cfg.Guard.OnParseError,
					map[string]string{"forward": "forwarded unguarded", "reject": "refused"}[cfg.Guard.OnParseError])
				return nil
			}
			for i := range plan.Statements {
				describeStatement(out, &plan.Statements[i], cfg)
			}
			return nil
		},
	}
	config.BindFlags(cmd.Flags())
	cmd.Flags().StringVar(&searchPath, "search-path", "public", "schemas that unqualified table names resolve through, comma-separated")
	return cmd
}

func describeStatement(out interface{ Write([]byte) (int, error) }, st *rewrite.Statement, cfg *config.Config) {
	for _, n := range st.Notes {
		fmt.Fprintf(out, "-- %s\n", n)
	}
	eff := st
	if st.Kind == rewrite.KindPrepare && st.Inner != nil {
		eff = st.Inner
	}
	switch {
	case eff.Refuse:
		fmt.Fprintf(out, "-- refused with SQLSTATE %s: no version predicate (mode required)\n", cfg.Guard.RequiredSQLState)
	case eff.Checked:
		fmt.Fprintf(out, "-- checked: zero rows affected raises SQLSTATE %s (expected version %s)\n", cfg.Guard.StaleSQLState, valueText(eff.Expected))
	case eff.Policy != nil:
		fmt.Fprintln(out, "-- unchecked: zero rows affected is reported as is")
	}
	fmt.Fprintln(out, strings.TrimSpace(st.SQL)+";")
}

func valueText(v rewrite.Value) string {
	switch v.Kind {
	case rewrite.ValueLiteral:
		return v.Literal
	case rewrite.ValueParam:
		return fmt.Sprintf("$%d", v.Param)
	case rewrite.ValueExpr:
		return v.Expr
	}
	return "?"
}
