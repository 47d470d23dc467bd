#!/usr/bin/env bash
# Benchmark: PostgreSQL directly vs. through PgBouncer vs. through pgoptimist.
#
# Starts its own throwaway PostgreSQL (bench/cmd/benchenv), PgBouncer (session
# pooling) and pgoptimist, loads `pgbench -i -s $SCALE`, then runs alternating
# rounds over the targets of:
#   (a) pgbench -S -M extended -c 8 -j 2   select-only, extended protocol
#   (b) pgbench    -M prepared -c 8 -j 2   TPC-B-like, prepared statements
#   (c) pgbench -S -M simple   -c 1 -j 1   select-only, one client (latency)
# and prints median TPS / latency per target relative to direct. Each run's
# TPS and latency are its steady state: the mean of pgbench's per-second
# progress (-P 1) after the first WARMUP seconds. The select-only workloads
# (a) and (c) run on a database of their own at scale SELECT_SCALE (1), (b)
# on one at scale SCALE (10): the TPC-B-like workload's contention depends
# on the scale, select-only's does not.
#
# Both choices keep a fresh backend's warm-up out of the figures. Every
# client connection starts a fresh backend, and a fresh backend's first touch
# of each shared buffer page is a page fault; on the virtual machines this
# was measured on (paravirtualized page tables) those faults are so dear that
# at scale 10, where select-only touches 150 MB of pages, 8 fresh backends
# ramped from 7-8k to 20k TPS over their first 4-5 s, and that ramp, not the
# relay, decided single runs. At scale 1 (16 MB) the ramp is over within the
# first second and the seconds after it agree within a few percent.
#
# TLS rows (same run, interleaved with the rows above): PostgreSQL runs with
# ssl=on (plain targets connect with sslmode=disable), and workloads
# $TLS_WORKLOADS run over
#   direct-tls      pgbench -> PostgreSQL, sslmode=require
#   pgbouncer-p2t   plain client -> PgBouncer -> TLS server (server_tls_sslmode=require)
#   pgoptimist-p2t  plain client -> pgoptimist -> TLS server (upstream.tls: require)
#   pgbouncer-t2t   TLS client -> PgBouncer (client_tls_sslmode=allow) -> TLS server
#   pgoptimist-t2t  TLS client -> pgoptimist (tls.mode: allow) -> TLS server
# reported relative to direct-tls. For every proxy target the CPU time the
# proxy process used per transaction (utime+stime from /proc/PID/stat
# around each run) is reported too: it is less sensitive to a busy machine
# than throughput.
#
# Environment:
#   ROUNDS=5         rounds per workload and target
#   DURATION=10s     length of each pgbench run (seconds; a trailing "s" is fine)
#   WARMUP=2         seconds at the start of each run left out of its TPS and
#                    latency (the whole run counts when DURATION <= WARMUP)
#   SCALE=10         pgbench scale factor of the TPC-B-like workload (b)
#   SELECT_SCALE=1   pgbench scale factor of the select-only workloads (a), (c)
#   TARGETS="direct pgbouncer pgoptimist"   which targets to run
#   WORKLOADS="a b c"                        which workloads to run ("" for none)
#   TLS_TARGETS="direct-tls pgbouncer-p2t pgoptimist-p2t pgbouncer-t2t pgoptimist-t2t"
#                    TLS targets ("" skips the TLS rows)
#   TLS_WORKLOADS="a c"                      workloads of the TLS rows
#   SKIP_BUILD=1     do not run `make build` (use the existing bin/pgoptimist)
#   PGOPTIMIST_ARGS  extra arguments for `pgoptimist serve` (e.g. --config file.yaml)
#   TRACKED=0        skip the tracked/observe workloads (h, i)
#   KEEP_LOGS=1      keep the temporary directory with all logs
#   PGOPTIMIST=path  pgoptimist binary (default bin/pgoptimist)
#   PGOPTIMIST_BASELINE=path  a second pgoptimist binary (an earlier build),
#                    run as target "baseline" on the plain rows of the same run,
#                    and as baseline-p2t and baseline-t2t on the TLS rows
#   SETTLE=2         seconds of pause before each run: the previous run's
#                    backends exit and the machine settles (without it the
#                    target run right after direct measured up to 15 % low,
#                    the same binary in two slots 0.686 vs 0.813)
#   PGBOUNCER_SERVER_LIFETIME=0  PgBouncer's server_lifetime. 0 (the default)
#                    closes a server connection when its client leaves, so
#                    that every client connection of every target starts a
#                    fresh backend, as pgbench's connections do directly and
#                    through pgoptimist (a 1:1 proxy). With PgBouncer's own
#                    default (3600) its pool hands each round the backends
#                    of the rounds before, already warm: a fresh backend
#                    runs the select-only workload at half speed for its
#                    first seconds (it faults in the shared buffers it
#                    touches), so a 6-10 s round measures that warm-up more
#                    than the relay.
#
# The pgoptimist target is skipped (with a warning) when bin/pgoptimist cannot
# be built. Default runtime: 5 rounds x (9 plain + 10 TLS runs) x 12 s, then
# 5 rounds x 11 guarded and tracked runs: about 30 minutes.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
DURATION=${DURATION%s}
SCALE=${SCALE:-10}
WARMUP=${WARMUP:-2}
SELECT_SCALE=${SELECT_SCALE:-1}
TARGETS=${TARGETS:-"direct pgbouncer pgoptimist"}
WORKLOADS=${WORKLOADS-"a b c"}
TLS_TARGETS=${TLS_TARGETS-"direct-tls pgbouncer-p2t pgoptimist-p2t pgbouncer-t2t pgoptimist-t2t"}
TLS_WORKLOADS=${TLS_WORKLOADS:-"a c"}
# Plain targets stay plain although the server offers TLS; run_one sets the
# TLS targets' sslmode.
export PGSSLMODE=disable
PGOPTIMIST_ARGS=${PGOPTIMIST_ARGS:-}
# The plain rows compare plain connections on both legs: the server offers
# TLS for the TLS rows, and pgoptimist's default upstream.tls (prefer) would
# take it where PgBouncer (server_tls_sslmode=disable) does not.
PLAIN_UPSTREAM_TLS=${PGOPTIMIST_UPSTREAM_TLS:-disable}
DB=bench
DB_SELECT=bench_select # the select-only workloads' (SELECT_SCALE)
PGUSER_BENCH=postgres

case "$ROUNDS$DURATION$SCALE$SELECT_SCALE$WARMUP" in
*[!0-9]*)
	echo "bench: ROUNDS, DURATION, SCALE, SELECT_SCALE and WARMUP must be integers" >&2
	exit 2
	;;
esac

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

# --- tools -------------------------------------------------------------------

need_pgbouncer=0
case " $TARGETS $TLS_TARGETS " in *" pgbouncer "* | *" pgbouncer-"*) need_pgbouncer=1 ;; esac

find_pg_bin() { # name
	if command -v "$1" >/dev/null 2>&1; then
		command -v "$1"
		return
	fi
	local d
	for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4,4 -rn); do
		if [ -x "$d/$1" ]; then
			echo "$d/$1"
			return
		fi
	done
	return 1
}

ensure_args=()
[ "$need_pgbouncer" -eq 1 ] && ensure_args+=(--pgbouncer)
"$ROOT/scripts/ensure-postgres.sh" "${ensure_args[@]}"

PGBENCH=$(find_pg_bin pgbench) || die "pgbench not found"
PSQL=$(find_pg_bin psql) || die "psql not found"
if [ "$need_pgbouncer" -eq 1 ]; then
	# apt may still be installing it in the background: wait a little.
	for _ in $(seq 1 120); do
		PGBOUNCER=$(command -v pgbouncer 2>/dev/null || true)
		[ -z "$PGBOUNCER" ] && [ -x /usr/sbin/pgbouncer ] && PGBOUNCER=/usr/sbin/pgbouncer
		[ -n "$PGBOUNCER" ] && break
		sleep 5
	done
	[ -n "$PGBOUNCER" ] || die "pgbouncer not found"
fi

# --- temp dir and cleanup ----------------------------------------------------

TMP=$(mktemp -d "${TMPDIR:-/tmp}/pgoptimist-bench.XXXXXX")
# PgBouncer runs as the postgres OS user when we are root: it must read its
# config and write its log here.
chmod 0755 "$TMP"

PIDS=()
CUR=""
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	local i
	if [ -n "$CUR" ]; then
		kill -TERM "$CUR" 2>/dev/null || true
		wait "$CUR" 2>/dev/null || true
	fi
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		kill -TERM "${PIDS[$i]}" 2>/dev/null || true
	done
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		# Give each process up to 30s, then force it.
		local n=0
		while kill -0 "${PIDS[$i]}" 2>/dev/null && [ $n -lt 300 ]; do
			sleep 0.1
			n=$((n + 1))
		done
		kill -KILL "${PIDS[$i]}" 2>/dev/null || true
		wait "${PIDS[$i]}" 2>/dev/null || true
	done
	if [ "${KEEP_LOGS:-0}" = 1 ]; then
		log "logs kept in $TMP"
	else
		rm -rf "$TMP"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# run_fg CMD...: run CMD in the background and wait for it, so that INT/TERM reach
# the traps at once instead of after CMD finishes.
run_fg() {
	"$@" &
	CUR=$!
	local rc=0
	wait "$CUR" || rc=$?
	CUR=""
	return "$rc"
}

# --- build -------------------------------------------------------------------

log "building helpers"
go build -o "$TMP/benchenv" ./bench/cmd/benchenv

have_target() { case " $TARGETS " in *" $1 "*) return 0 ;; esac; return 1; }
have_tls_target() { case " $TLS_TARGETS " in *" $1"*) return 0 ;; esac; return 1; }
drop_target() {
	local t out=""
	for t in $TARGETS; do [ "$t" = "$1" ] || out="$out $t"; done
	TARGETS=${out# }
}

PGOPTIMIST=${PGOPTIMIST:-$ROOT/bin/pgoptimist}
if have_target pgoptimist || have_tls_target pgoptimist; then
	if [ "${SKIP_BUILD:-0}" != 1 ]; then
		log "make build"
		if ! make -s build >"$TMP/build.log" 2>&1; then
			log "WARNING: make build failed; skipping the pgoptimist target:"
			tail -n 20 "$TMP/build.log" >&2
			drop_target pgoptimist
			TLS_TARGETS=$(echo "$TLS_TARGETS" | tr ' ' '\n' | grep -v '^pgoptimist' | tr '\n' ' ')
		fi
	fi
	if [ ! -x "$PGOPTIMIST" ]; then
		log "WARNING: $PGOPTIMIST does not exist; skipping the pgoptimist targets"
		drop_target pgoptimist
		TLS_TARGETS=$(echo "$TLS_TARGETS" | tr ' ' '\n' | grep -v '^pgoptimist' | tr '\n' ' ')
	fi
fi
TLS_TARGETS=$(echo $TLS_TARGETS)
[ -n "$TARGETS$TLS_TARGETS" ] || die "no targets left to benchmark"

freeport() { "$TMP/benchenv" -freeport; }

# wait_port NAME PID PORT LOGFILE: wait until PORT accepts TCP connections.
wait_port() {
	local name=$1 pid=$2 port=$3 logfile=$4 i
	for i in $(seq 1 200); do
		if ! kill -0 "$pid" 2>/dev/null; then
			log "$name exited during start-up; its log:"
			tail -n 30 "$logfile" >&2 || true
			return 1
		fi
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			return 0
		fi
		sleep 0.1
	done
	log "$name did not listen on port $port within 20s; its log:"
	tail -n 30 "$logfile" >&2 || true
	return 1
}

# --- PostgreSQL --------------------------------------------------------------

ssl_args=()
if [ -n "$TLS_TARGETS" ]; then
	# One throwaway certificate for the server and both proxies (ECDSA
	# P-256; the data path cipher is what the peers negotiate: AES-GCM).
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
		-subj /CN=localhost -keyout "$TMP/tls.key" -out "$TMP/tls.crt" >"$TMP/openssl.log" 2>&1 ||
		die "openssl could not make a certificate: $(cat "$TMP/openssl.log")"
	chmod 0644 "$TMP/tls.crt"
	chmod 0600 "$TMP/tls.key"
	ssl_args=(-sslcert "$TMP/tls.crt" -sslkey "$TMP/tls.key")
fi
log "starting PostgreSQL"
"$TMP/benchenv" -db "$DB" -log "$TMP/postgres.log" "${ssl_args[@]}" >"$TMP/benchenv.out" 2>"$TMP/benchenv.err" &
PIDS+=($!)
for _ in $(seq 1 1200); do
	grep -q '^READY=1' "$TMP/benchenv.out" 2>/dev/null && break
	if ! kill -0 "${PIDS[0]}" 2>/dev/null; then
		cat "$TMP/benchenv.err" >&2
		die "PostgreSQL did not start"
	fi
	sleep 0.1
done
grep -q '^READY=1' "$TMP/benchenv.out" || die "PostgreSQL did not start within 120s"
PGPORT_DIRECT=$(sed -n 's/^PGPORT=//p' "$TMP/benchenv.out")
log "PostgreSQL on 127.0.0.1:$PGPORT_DIRECT"

declare -A PORT SSLMODE PROC
PORT[direct]=$PGPORT_DIRECT
PORT[direct-tls]=$PGPORT_DIRECT
SSLMODE[direct-tls]=require

# --- PgBouncer ---------------------------------------------------------------

# start_pgbouncer NAME [extra ini lines]: a PgBouncer in session mode in
# front of the server, listening on PORT[NAME].
start_pgbouncer() {
	local name=$1 extra=${2:-}
	PORT[$name]=$(freeport)
	cat >"$TMP/userlist.txt" <<-EOF
		"$PGUSER_BENCH" ""
	EOF
	cat >"$TMP/$name.ini" <<-EOF
		[databases]
		$DB = host=127.0.0.1 port=$PGPORT_DIRECT dbname=$DB
		$DB_SELECT = host=127.0.0.1 port=$PGPORT_DIRECT dbname=$DB_SELECT
		postgres = host=127.0.0.1 port=$PGPORT_DIRECT dbname=postgres

		[pgbouncer]
		listen_addr = 127.0.0.1
		listen_port = ${PORT[$name]}
		unix_socket_dir =
		auth_type = trust
		auth_file = $TMP/userlist.txt
		pool_mode = session
		max_client_conn = 200
		default_pool_size = 50
		server_lifetime = ${PGBOUNCER_SERVER_LIFETIME:-0}
		ignore_startup_parameters = extra_float_digits
		logfile = $TMP/$name.log
		pidfile =
		$extra
	EOF
	chmod 0644 "$TMP/userlist.txt" "$TMP/$name.ini"
	touch "$TMP/$name.log"
	bouncer_args=()
	if [ "$(id -u)" -eq 0 ]; then
		chown postgres "$TMP/$name.log"
		bouncer_args=(-u postgres)
	fi
	log "starting $name on 127.0.0.1:${PORT[$name]}"
	"$PGBOUNCER" -q "${bouncer_args[@]}" "$TMP/$name.ini" >>"$TMP/$name.out" 2>&1 &
	PIDS+=($!)
	PROC[$name]=$!
	wait_port "$name" "$!" "${PORT[$name]}" "$TMP/$name.log" || die "$name did not start"
}

if have_target pgbouncer; then
	start_pgbouncer pgbouncer
fi
if have_tls_target pgbouncer; then
	# PgBouncer may run as postgres: its own copy of the key.
	cp "$TMP/tls.key" "$TMP/bouncer.key"
	[ "$(id -u)" -eq 0 ] && chown postgres "$TMP/bouncer.key"
	start_pgbouncer pgbouncer-tls "server_tls_sslmode = require
client_tls_sslmode = allow
client_tls_cert_file = $TMP/tls.crt
client_tls_key_file = $TMP/bouncer.key"
	PORT[pgbouncer-p2t]=${PORT[pgbouncer-tls]} PORT[pgbouncer-t2t]=${PORT[pgbouncer-tls]}
	PROC[pgbouncer-p2t]=${PROC[pgbouncer-tls]} PROC[pgbouncer-t2t]=${PROC[pgbouncer-tls]}
	SSLMODE[pgbouncer-t2t]=require
fi

# --- pgoptimist --------------------------------------------------------------

# start_plain_pgoptimist NAME BINARY: BINARY serving target NAME, upstream
# without TLS.
start_plain_pgoptimist() {
	local name=$1 bin=$2
	PORT[$name]=$(freeport)
	log "starting $name ($bin) on 127.0.0.1:${PORT[$name]}"
	# shellcheck disable=SC2086 # PGOPTIMIST_ARGS is split on purpose
	PGOPTIMIST_UPSTREAM_TLS=$PLAIN_UPSTREAM_TLS "$bin" serve --listen "127.0.0.1:${PORT[$name]}" \
		--upstream "127.0.0.1:$PGPORT_DIRECT" $PGOPTIMIST_ARGS >"$TMP/$name.log" 2>&1 &
	PIDS+=($!)
	PROC[$name]=$!
	wait_port "$name" "$!" "${PORT[$name]}" "$TMP/$name.log" || die "$name did not start"
}
if have_target pgoptimist; then
	start_plain_pgoptimist pgoptimist "$PGOPTIMIST"
fi
# A second pgoptimist binary (PGOPTIMIST_BASELINE), configured the same way,
# for before/after comparisons within one run: target "baseline".
if [ -n "${PGOPTIMIST_BASELINE:-}" ]; then
	[ -x "$PGOPTIMIST_BASELINE" ] || die "PGOPTIMIST_BASELINE=$PGOPTIMIST_BASELINE is not an executable"
	start_plain_pgoptimist baseline "$PGOPTIMIST_BASELINE"
	TARGETS="$TARGETS baseline"
fi
# start_tls_pgoptimist NAME BINARY: BINARY with TLS towards the server
# (require) and offered to clients (allow), serving targets NAME-p2t and
# NAME-t2t.
start_tls_pgoptimist() {
	local name=$1 bin=$2 port
	port=$(freeport)
	cat >"$TMP/$name-tls.yaml" <<YAML
listen: 127.0.0.1:$port
upstream:
  address: 127.0.0.1:$PGPORT_DIRECT
  tls: require
tls:
  mode: allow
  cert_file: $TMP/tls.crt
  key_file: $TMP/tls.key
log:
  level: warn
YAML
	log "starting $name ($bin) with TLS on 127.0.0.1:$port"
	"$bin" serve --config "$TMP/$name-tls.yaml" >"$TMP/$name-tls.log" 2>&1 &
	PIDS+=($!)
	wait_port "$name-tls" "$!" "$port" "$TMP/$name-tls.log" || die "$name with TLS did not start"
	PORT[$name-p2t]=$port PORT[$name-t2t]=$port
	PROC[$name-p2t]=$! PROC[$name-t2t]=$!
	SSLMODE[$name-t2t]=require
}
if have_tls_target pgoptimist; then
	start_tls_pgoptimist pgoptimist "$PGOPTIMIST"
	if [ -n "${PGOPTIMIST_BASELINE:-}" ]; then
		start_tls_pgoptimist baseline "$PGOPTIMIST_BASELINE"
		TLS_TARGETS="$TLS_TARGETS baseline-p2t baseline-t2t"
	fi
fi

# --- load data and smoke-test every target ------------------------------------

log "pgbench -i -s $SCALE ($DB), -s $SELECT_SCALE ($DB_SELECT)"
{
	run_fg "$PSQL" -X -q -h 127.0.0.1 -p "$PGPORT_DIRECT" -U "$PGUSER_BENCH" -d "$DB" -c "CREATE DATABASE $DB_SELECT" &&
		run_fg "$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PGPORT_DIRECT" -U "$PGUSER_BENCH" "$DB" &&
		run_fg "$PGBENCH" -i -q -s "$SELECT_SCALE" -h 127.0.0.1 -p "$PGPORT_DIRECT" -U "$PGUSER_BENCH" "$DB_SELECT"
} >"$TMP/init.log" 2>&1 || {
	tail -n 20 "$TMP/init.log" >&2
	die "pgbench -i failed"
}

for t in $TARGETS $TLS_TARGETS; do
	if ! PGSSLMODE=${SSLMODE[$t]:-disable} run_fg "$PGBENCH" -n -S -t 10 -c 1 -h 127.0.0.1 -p "${PORT[$t]}" -U "$PGUSER_BENCH" "$DB" \
		>"$TMP/smoke-$t.log" 2>&1; then
		tail -n 20 "$TMP/smoke-$t.log" >&2
		die "smoke test through $t failed"
	fi
done

# --- runs --------------------------------------------------------------------

workload_args() {
	case "$1" in
	a) echo "-S -M extended -c 8 -j 2" ;;
	b) echo "-M prepared -c 8 -j 2" ;;
	c) echo "-S -M simple -c 1 -j 1" ;;
	*) die "unknown workload $1" ;;
	esac
}
workload_db() {
	case "$1" in
	b) echo "$DB" ;;
	*) echo "$DB_SELECT" ;;
	esac
}
workload_title() {
	case "$1" in
	a) echo "(a) select-only, extended protocol, 8 clients (-S -M extended -c 8 -j 2, scale $SELECT_SCALE)" ;;
	b) echo "(b) TPC-B-like, prepared statements, 8 clients (-M prepared -c 8 -j 2, scale $SCALE)" ;;
	c) echo "(c) select-only, simple protocol, 1 client (-S -M simple -c 1 -j 1, scale $SELECT_SCALE)" ;;
	esac
}

RESULTS="$TMP/results.txt"
: >"$RESULTS"
CPU_RESULTS="$TMP/cpu.txt"
: >"$CPU_RESULTS"

# cpu_ticks PID: user+system CPU time of a process, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
CLK_TCK=$(getconf CLK_TCK)
FAILURES=0

# steady LOG: "TPS LATENCY_MS" of a pgbench run with -P 1 in its steady
# state (see WARMUP): the mean TPS of the seconds after the warm-up, and
# their latency weighted by transactions. Nothing when there are none.
steady() {
	awk -v skip="$WARMUP" '/^progress: / && $2 + 0 > skip && $4 + 0 > 0 { n++; t += $4; l += $4 * $7 }
		END { if (n > 0) printf "%.1f %.4f\n", t / n, l / t }' "$1"
}

# run_one WORKLOAD TARGET ROUND
run_one() {
	local w=$1 t=$2 r=$3 out="$TMP/run-$1-$2-$3.log" tps lat stps slat pid=${PROC[$t]:-} c0=0 c1 ntx
	sleep "${SETTLE:-2}" # see SETTLE
	[ -n "$pid" ] && c0=$(cpu_ticks "$pid")
	# shellcheck disable=SC2046 # word splitting of the workload flags is intended
	if PGSSLMODE=${SSLMODE[$t]:-disable} run_fg "$PGBENCH" -n $(workload_args "$w") -T "$DURATION" -P 1 -h 127.0.0.1 -p "${PORT[$t]}" \
		-U "$PGUSER_BENCH" "$(workload_db "$w")" >"$out" 2>&1; then
		# pgbench >= 14: "tps = N (without initial connection time)";
		# older: "tps = N (excluding connections establishing)".
		tps=$(awk '/^tps = / && /(without initial|excluding)/ { print $3; exit }' "$out")
		[ -n "$tps" ] || tps=$(awk '/^tps = / { print $3; exit }' "$out")
		lat=$(awk '/^latency average = / { print $4; exit }' "$out")
		read -r stps slat < <(steady "$out") || true
		[ -n "${stps:-}" ] && tps=$stps lat=$slat
	fi
	if [ -z "${tps:-}" ] || [ -z "${lat:-}" ]; then
		FAILURES=$((FAILURES + 1))
		log "run failed: workload $w target $t round $r; output:"
		tail -n 15 "$out" >&2
		return 0
	fi
	echo "$w $t $tps $lat $r" >>"$RESULTS"
	if [ -n "$pid" ]; then
		c1=$(cpu_ticks "$pid")
		ntx=$(awk '/^number of transactions actually processed: / { print $6; exit }' "$out")
		[ -n "$ntx" ] && [ "$ntx" -gt 0 ] &&
			awk -v w="$w" -v t="$t" -v d=$((c1 - c0)) -v n="$ntx" -v hz="$CLK_TCK" \
				'BEGIN { printf "%s %s %.2f\n", w, t, d * 1e6 / hz / n }' >>"$CPU_RESULTS"
	fi
	printf '[bench %s]   %-2s %-14s round %d: tps %10.1f  latency %.3f ms\n' \
		"$(date +%H:%M:%S)" "$w" "$t" "$r" "$tps" "$lat" >&2
}

read -r -a TARGET_LIST <<<"$TARGETS"
ntargets=${#TARGET_LIST[@]}
read -r -a TLS_TARGET_LIST <<<"$TLS_TARGETS"
ntls=${#TLS_TARGET_LIST[@]}
[ "$ntargets" -gt 0 ] || WORKLOADS=""
[ "$ntls" -gt 0 ] || TLS_WORKLOADS=""
log "running: rounds=$ROUNDS duration=${DURATION}s workloads=[$WORKLOADS] targets=[$TARGETS]" \
	"tls workloads=[$TLS_WORKLOADS] tls targets=[$TLS_TARGETS]"
for ((r = 1; r <= ROUNDS; r++)); do
	for w in $WORKLOADS; do
		# Rotate the target order every round so no target always runs first.
		for ((i = 0; i < ntargets; i++)); do
			t=${TARGET_LIST[$(((i + r - 1) % ntargets))]}
			run_one "$w" "$t" "$r"
		done
	done
	for w in $TLS_WORKLOADS; do
		for ((i = 0; i < ntls; i++)); do
			t=${TLS_TARGET_LIST[$(((i + r - 1) % ntls))]}
			run_one "$w" "$t" "$r"
		done
	done
done

# start_vt_proxy NAME MODE: a pgoptimist guarding public.vt in MODE, as
# target NAME (PORT[NAME]).
start_vt_proxy() {
	local name=$1 mode=$2
	PORT[$name]=$(freeport)
	cat >"$TMP/$name.yaml" <<YAML
listen: 127.0.0.1:${PORT[$name]}
upstream:
  address: 127.0.0.1:$PGPORT_DIRECT
  tls: disable
log:
  level: warn
tables:
  - name: public.vt
    mode: $mode
YAML
	"$PGOPTIMIST" serve --config "$TMP/$name.yaml" >"$TMP/pgoptimist-$name.log" 2>&1 &
	PIDS+=($!)
	wait_port "$name" "$!" "${PORT[$name]}" "$TMP/pgoptimist-$name.log" || die "pgoptimist $name (mode $mode) did not start"
}

# script_run SECTION LABEL SCRIPT MODE TARGET ROUND RESULTS: one pgbench run
# of a custom script, 8 clients; appends "LABEL TARGET TPS" to RESULTS, or
# counts a failure.
script_run() {
	local section=$1 label=$2 script=$3 m=$4 t=$5 r=$6 results=$7 out tps=
	out="$TMP/$section-$label-$t-$r.log"
	if run_fg "$PGBENCH" -n -f "$script" -M "$m" -c 8 -j 2 -T "$DURATION" -P 1 \
		-h 127.0.0.1 -p "${PORT[$t]}" -U "$PGUSER_BENCH" "$DB" >"$out" 2>&1; then
		tps=$(steady "$out" | awk '{ print $1 }')
		[ -n "$tps" ] || tps=$(awk '/^tps = / { print $3; exit }' "$out")
	fi
	if [ -z "$tps" ] || grep -q "aborted" "$out"; then
		FAILURES=$((FAILURES + 1))
		log "$section run failed: $label $t round $r"
		tail -n 15 "$out" >&2
		return
	fi
	echo "$label $t $tps" >>"$results"
	printf '[bench %s]   %s  %-15s %-10s round %d: tps %10.1f\n' "$(date +%H:%M:%S)" "$section" "$label" "$t" "$r" "$tps" >&2
}

# guarded_bench: the guarded-update workload. Every client reads a row's
# version and updates the row with "AND version = :version", on rows of its
# own (no conflicts, so pgbench never aborts), through pgoptimist with the
# table guarded (rewritten, incremented, held for the check) and through
# pgoptimist with no table guarded (the same statements forwarded as they
# are), in simple and extended protocol. GUARDED=0 skips it.
GUARDED_RESULTS="$TMP/guarded.txt"
guarded_bench() {
	[ "${GUARDED:-1}" = 1 ] && have_target pgoptimist || return 0
	log "guarded workload: loading public.vt"
	run_fg "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT_DIRECT" -U "$PGUSER_BENCH" -d "$DB" -c "
		DROP TABLE IF EXISTS vt;
		CREATE TABLE vt (id int PRIMARY KEY, version int NOT NULL DEFAULT 1, n int NOT NULL DEFAULT 0);
		INSERT INTO vt (id) SELECT generate_series(1, 80000);" -c "VACUUM ANALYZE vt" >"$TMP/vt.log" 2>&1 || {
		cat "$TMP/vt.log" >&2
		die "loading vt failed"
	}
	cat >"$TMP/guarded.sql" <<'SQL'
\set id :client_id * 10000 + random(1, 10000)
SELECT version FROM vt WHERE id = :id \gset
UPDATE vt SET n = n + 1 WHERE id = :id AND version = :version;
SQL
	start_vt_proxy guarded explicit
	: >"$GUARDED_RESULTS"
	local r m t
	for ((r = 1; r <= ROUNDS; r++)); do
		for m in simple extended; do
			for t in pgoptimist guarded; do
				script_run g "$m" "$TMP/guarded.sql" "$m" "$t" "$r" "$GUARDED_RESULTS"
			done
		done
	done
	echo "(g) guarded update: SELECT version, then UPDATE ... AND version = :version, 8 clients (-f guarded.sql -c 8 -j 2)"
	printf '  %-10s %18s %16s %10s\n' protocol "unguarded TPS" "guarded TPS" "guarded/unguarded"
	for m in simple extended; do
		local u g
		u=$(awk -v m="$m" '$1 == m && $2 == "pgoptimist" { print $3 }' "$GUARDED_RESULTS" | median)
		g=$(awk -v m="$m" '$1 == m && $2 == "guarded" { print $3 }' "$GUARDED_RESULTS" | median)
		if [ -z "$u" ] || [ -z "$g" ]; then
			printf '  %-10s %18s\n' "$m" "(no successful runs)"
			continue
		fi
		printf '  %-10s %18.1f %16.1f %10.3f\n' "$m" "$u" "$g" "$(awk -v a="$g" -v b="$u" 'BEGIN { print a / b }')"
	done
}

# tracked_bench: tracked and observe mode. The same table as the guarded
# workload, through pgoptimist with nothing guarded, with the table in mode
# tracked, and in mode observe: (h) point reads (the hidden version and key
# columns added and stripped, the version remembered), simple and extended
# protocol; (i) a read-modify-write transaction that never mentions the
# version (BEGIN; SELECT n; UPDATE ... SET n = :n + 1 WHERE id; COMMIT), on
# rows of each client's own, extended protocol. TRACKED=0 skips it.
TRACKED_RESULTS="$TMP/tracked.txt"
tracked_bench() {
	[ "${TRACKED:-1}" = 1 ] && [ "${GUARDED:-1}" = 1 ] && have_target pgoptimist || return 0
	cat >"$TMP/tread.sql" <<'SQL'
\set id random(1, 80000)
SELECT n FROM vt WHERE id = :id;
SQL
	cat >"$TMP/trmw.sql" <<'SQL'
\set id :client_id * 10000 + random(1, 10000)
BEGIN;
SELECT n FROM vt WHERE id = :id \gset
UPDATE vt SET n = :n + 1 WHERE id = :id;
COMMIT;
SQL
	start_vt_proxy tracked tracked
	start_vt_proxy observe observe
	: >"$TRACKED_RESULTS"
	local r w t
	for ((r = 1; r <= ROUNDS; r++)); do
		for w in tread-simple tread-extended trmw-extended; do
			for t in pgoptimist tracked observe; do
				[ "$w" != "trmw-extended" ] && [ "$t" = observe ] && continue
				script_run h "$w" "$TMP/${w%%-*}.sql" "${w#*-}" "$t" "$r" "$TRACKED_RESULTS"
			done
		done
	done
	echo
	echo "(h) tracked reads: SELECT n FROM vt WHERE id = :id, 8 clients; (i) read-modify-write without a version: BEGIN; SELECT n; UPDATE ... SET n = :n + 1; COMMIT, 8 clients"
	printf '  %-16s %-9s %14s %12s %12s\n' workload mode "unguarded TPS" "mode TPS" "mode/unguarded"
	for w in tread-simple tread-extended trmw-extended; do
		local u v
		u=$(awk -v w="$w" '$1 == w && $2 == "pgoptimist" { print $3 }' "$TRACKED_RESULTS" | median)
		for t in tracked observe; do
			v=$(awk -v w="$w" -v t="$t" '$1 == w && $2 == t { print $3 }' "$TRACKED_RESULTS" | median)
			[ -n "$u" ] && [ -n "$v" ] || continue
			printf '  %-16s %-9s %14.1f %12.1f %12.3f\n' "$w" "$t" "$u" "$v" "$(awk -v a="$v" -v b="$u" 'BEGIN { print a / b }')"
		done
	done
}

# --- report ------------------------------------------------------------------

median() { # values on stdin -> median
	sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit; if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
values() { # workload target column(3=tps,4=lat)
	awk -v w="$1" -v t="$2" -v c="$3" '$1 == w && $2 == t { print $c }' "$RESULTS"
}

echo
echo "pgoptimist benchmark: PostgreSQL $("$PGBENCH" --version | awk '{ print $3 }'), scale $SCALE (select-only: $SELECT_SCALE)," \
	"$ROUNDS rounds x ${DURATION}s, $(nproc) CPUs"
for w in $WORKLOADS; do
	echo
	workload_title "$w"
	if [ "$w" = c ]; then
		printf '  %-12s %6s %18s %14s %12s\n' target runs "median latency ms" "added vs direct" "median TPS"
	else
		printf '  %-12s %6s %12s %10s\n' target runs "median TPS" "vs direct"
	fi
	dtps=$(values "$w" direct 3 | median)
	dlat=$(values "$w" direct 4 | median)
	for t in $TARGETS; do
		n=$(values "$w" "$t" 3 | wc -l)
		tps=$(values "$w" "$t" 3 | median)
		lat=$(values "$w" "$t" 4 | median)
		if [ "$n" -eq 0 ]; then
			printf '  %-12s %6d %12s\n' "$t" 0 "(no successful runs)"
			continue
		fi
		if [ "$w" = c ]; then
			if [ -n "$dlat" ]; then
				added=$(awk -v a="$lat" -v b="$dlat" 'BEGIN { printf "%+.1f us", (a - b) * 1000 }')
			else
				added="n/a"
			fi
			printf '  %-12s %6d %18.3f %14s %12.1f\n' "$t" "$n" "$lat" "$added" "$tps"
		else
			if [ -n "$dtps" ]; then
				ratio=$(awk -v a="$tps" -v b="$dtps" 'BEGIN { printf "%.3f", a / b }')
			else
				ratio="n/a"
			fi
			printf '  %-12s %6d %12.1f %10s\n' "$t" "$n" "$tps" "$ratio"
		fi
	done
done

# TLS rows, relative to direct TLS connections.
if [ -n "$TLS_WORKLOADS" ]; then
	echo
	echo "TLS rows: PostgreSQL ssl=on; p2t = plain client -> proxy -> TLS server, t2t = TLS client -> proxy -> TLS server"
	for w in $TLS_WORKLOADS; do
		echo
		workload_title "$w"
		printf '  %-15s %6s %12s %14s %12s %14s\n' target runs "median TPS" "vs direct-tls" "latency ms" "added vs tls"
		dtps=$(values "$w" direct-tls 3 | median)
		dlat=$(values "$w" direct-tls 4 | median)
		for t in $TLS_TARGETS; do
			n=$(values "$w" "$t" 3 | wc -l)
			if [ "$n" -eq 0 ]; then
				printf '  %-15s %6d %12s\n' "$t" 0 "(no successful runs)"
				continue
			fi
			tps=$(values "$w" "$t" 3 | median)
			lat=$(values "$w" "$t" 4 | median)
			ratio=n/a added=n/a
			[ -n "$dtps" ] && ratio=$(awk -v a="$tps" -v b="$dtps" 'BEGIN { printf "%.3f", a / b }')
			[ -n "$dlat" ] && added=$(awk -v a="$lat" -v b="$dlat" 'BEGIN { printf "%+.1f us", (a - b) * 1000 }')
			printf '  %-15s %6d %12.1f %14s %12.3f %14s\n' "$t" "$n" "$tps" "$ratio" "$lat" "$added"
		done
	done
fi

# Head to head: pgoptimist against PgBouncer run by run. Targets run one
# after the other in every round, so a round's pair saw the same machine;
# the median of the pairs is steadier than the ratio of the two medians when
# the machine's speed drifts between rounds.
head_to_head() { # workload ours theirs -> "median min max" of TPS ratios, "...": latency differences (us)
	awk -v w="$1" -v a="$2" -v b="$3" '$1 == w && ($2 == a || $2 == b) { tps[$2, $5] = $3; lat[$2, $5] = $4; r[$5] = 1 }
		END { for (k in r) if ((a, k) in tps && (b, k) in tps)
			printf "%.4f %.1f\n", tps[a, k] / tps[b, k], (lat[a, k] - lat[b, k]) * 1000 }' "$RESULTS"
}
pairs=()
for w in $WORKLOADS; do pairs+=("$w pgoptimist pgbouncer"); done
for w in $TLS_WORKLOADS; do pairs+=("$w pgoptimist-p2t pgbouncer-p2t" "$w pgoptimist-t2t pgbouncer-t2t"); done
spread() { # printf format; values on stdin -> "median [lowest, highest]"
	sort -g | awk -v f="$1" '{ v[NR] = $1 } END { if (NR == 0) exit
		printf f " [" f ", " f "]", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2, v[1], v[NR] }'
}
if [ "${#pairs[@]}" -gt 0 ]; then
	echo
	echo "Head to head, same round: pgoptimist TPS / PgBouncer TPS and pgoptimist's latency minus PgBouncer's; median [lowest, highest] over rounds"
	printf '  %-8s %-15s %6s %26s %30s\n' workload target pairs "TPS ratio" "latency difference us"
	for p in "${pairs[@]}"; do
		read -r w a b <<<"$p"
		hh=$(head_to_head "$w" "$a" "$b")
		[ -n "$hh" ] || continue
		n=$(wc -l <<<"$hh")
		ratio=$(awk '{ print $1 }' <<<"$hh" | spread %.3f)
		diff=$(awk '{ print $2 }' <<<"$hh" | spread %+.1f)
		printf '  %-8s %-15s %6d %26s %30s\n' "$w" "$a" "$n" "$ratio" "$diff"
	done
fi

# CPU time of the proxy process per transaction.
if [ -s "$CPU_RESULTS" ]; then
	echo
	echo "Proxy CPU per transaction (utime+stime of the proxy process / transactions; median over rounds, microseconds)"
	printf '  %-8s %-15s %10s\n' workload target "us/tx"
	for w in $WORKLOADS $TLS_WORKLOADS; do
		for t in $TARGETS $TLS_TARGETS; do
			v=$(awk -v w="$w" -v t="$t" '$1 == w && $2 == t { print $3 }' "$CPU_RESULTS" | median)
			[ -n "$v" ] && printf '  %-8s %-15s %10.1f\n' "$w" "$t" "$v"
		done
	done | awk '!seen[$0]++'
fi

echo
guarded_bench
tracked_bench

if [ "$FAILURES" -gt 0 ]; then
	echo
	echo "WARNING: $FAILURES pgbench run(s) failed; see the log above."
	exit 1
fi
