package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/pgoptimist/pgoptimist/config"
	"github.com/pgoptimist/pgoptimist/internal/pgtemp"
	"github.com/spf13/cobra"
)

// demoSchema is the reference scenario's table (docs/design.md).
const demoSchema = `CREATE TABLE public.address (
  id bigserial PRIMARY KEY,
  version integer NOT NULL DEFAULT 1,
  state text,
  county text
);
INSERT INTO public.address (state, county) VALUES ('FL', 'Pinellas');`

func demoCmd() *cobra.Command {
	var cfgPath, listen string
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Start a throwaway PostgreSQL with the proxy in front of it",
		Long: `demo initialises a throwaway PostgreSQL server from the local server
binaries (data in a temporary directory), creates the table public.address,
starts the proxy in front of it with the demo configuration, prints how to
connect, and removes everything on Ctrl-C.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.LoadFile(cfgPath)
			if err != nil {
				return &exitError{code: 2, err: fmt.Errorf("invalid configuration %s:\n%w", cfgPath, err)}
			}
			if listen != "" {
				cfg.Listen = listen
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			fmt.Fprintln(os.Stderr, "starting a throwaway PostgreSQL server ...")
			pg, err := pgtemp.Start(ctx, pgtemp.Options{})
			if err != nil {
				return err
			}
			defer func() {
				fmt.Fprintln(os.Stderr, "stopping PostgreSQL and removing its data directory")
				if err := pg.Stop(); err != nil {
					fmt.Fprintln(os.Stderr, err)
				}
			}()
			if err := pg.Exec(ctx, demoSchema); err != nil {
				return err
			}
			cfg.Upstream.Address = pg.Addr()
			cfg.Upstream.TLS = "disable"
			return serve(ctx, cfg, nil, func(addr string) {
				fmt.Printf(`
pgoptimist is ready: PostgreSQL at %s, the proxy at %s guarding public.address.

  psql "postgres://postgres@%s/postgres?sslmode=disable"

Try the reference scenario (docs/design.md):
  UPDATE address SET state='NC', county='Guilford' WHERE id=1 AND version=1;  -- UPDATE 1
  UPDATE address SET county='Miami-Dade' WHERE id=1 AND version=1;            -- ERROR: stale record (VL409)

Press Ctrl-C to stop and remove everything.
`, pg.Addr(), addr, addr)
			})
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", "deploy/examples/demo.yaml", "demo configuration `FILE`")
	cmd.Flags().StringVar(&listen, "listen", "", "accept clients on `ADDR` (default: the configuration's listen)")
	return cmd
}
