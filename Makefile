# pgoptimist developer tasks. `make test` is the command CI runs (.ci/run).

GO       ?= go
BIN      := bin/pgoptimist
FUZZTIME ?= 20s
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@latest

.PHONY: all build test bench lint run fuzz ensure-postgres ensure-bench-deps clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/pgoptimist

# Integration tests start their own throwaway PostgreSQL (internal/pgtemp), so
# the server binaries must be installed.
test: ensure-postgres
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 15m ./...
	$(MAKE) --no-print-directory test-tls

bench: ensure-bench-deps build
	bench/bench.sh

lint:
	@out="$$(gofmt -l .)"; \
	if [ -n "$$out" ]; then echo "gofmt -l: files need formatting:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@if $(GO) run $(STATICCHECK) -version >/dev/null 2>&1; then \
		echo "$(GO) run $(STATICCHECK) ./..."; \
		$(GO) run $(STATICCHECK) ./...; \
	else \
		echo "lint: staticcheck not reachable ($(STATICCHECK)); skipped"; \
	fi

run: ensure-postgres build
	$(BIN) demo

# Short fuzzing of every Fuzz* target, FUZZTIME each (go test -fuzz takes one
# package and one target at a time).
fuzz:
	@set -e; \
	list="$$($(GO) test -list '^Fuzz' ./...)"; \
	targets="$$(echo "$$list" | awk '/^Fuzz/ { names = names " " $$1; next } /^ok/ { n = split(names, a, " "); for (i = 1; i <= n; i++) print $$2, a[i]; names = "" }')"; \
	if [ -z "$$targets" ]; then echo "fuzz: no Fuzz* targets found"; exit 0; fi; \
	echo "$$targets" | while read -r pkg name; do \
		echo "== $$pkg $$name ($(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) "$$pkg" </dev/null; \
	done

ensure-postgres:
	scripts/ensure-postgres.sh

ensure-bench-deps:
	scripts/ensure-postgres.sh --pgbouncer

clean:
	rm -rf bin

# A few minutes of mixed load and faults against bin/pgoptimist (bench/cmd/soak):
# a ledger that must lose no update, reloads, a server restart; prints the
# proxy's memory. Not part of `make test`. SOAK_DURATION (3m), SOAK_SESSIONS
# (300), SOAK_ROWS, SOAK_THINK, SOAK_RELOAD_EVERY, SOAK_RESTART configure it.
.PHONY: soak
soak: ensure-postgres build
	$(GO) run ./bench/cmd/soak -bin $(BIN)

# The integration suite again with TLS on both legs (PostgreSQL ssl=on,
# upstream.tls require, clients with sslmode=require), under the race detector.
.PHONY: test-tls
test-tls: ensure-postgres
	PGOPTIMIST_TEST_TLS=1 $(GO) test -count=1 -race -timeout 20m ./integration/
