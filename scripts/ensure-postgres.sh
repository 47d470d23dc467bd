#!/usr/bin/env bash
# Make sure the PostgreSQL server binaries (initdb, pg_ctl, postgres) and pgbench
# are installed; with --pgbouncer also PgBouncer. Installs Debian packages when
# something is missing (as root, or through sudo when available).
#
#   scripts/ensure-postgres.sh [--pgbouncer]
set -euo pipefail

want_pgbouncer=0
for arg in "$@"; do
	case "$arg" in
	--pgbouncer) want_pgbouncer=1 ;;
	-h | --help)
		sed -n '2,6p' "$0"
		exit 0
		;;
	*)
		echo "ensure-postgres: unknown argument $arg" >&2
		exit 2
		;;
	esac
done

# have NAME: NAME is on PATH or in /usr/lib/postgresql/*/bin.
have() {
	command -v "$1" >/dev/null 2>&1 && return 0
	local f
	for f in /usr/lib/postgresql/*/bin/"$1"; do
		[ -x "$f" ] && return 0
	done
	return 1
}

# pgbouncer is usually in /usr/sbin, which is not always on a user's PATH.
have_pgbouncer() {
	command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ]
}

apt_updated=0
apt_install() {
	local sudo=()
	if [ "$(id -u)" -ne 0 ]; then
		if command -v sudo >/dev/null 2>&1; then
			sudo=(sudo -n)
		else
			echo "ensure-postgres: need to install $* but not root and no sudo;" \
				"install it yourself (apt-get install -y $*)" >&2
			exit 1
		fi
	fi
	if ! command -v apt-get >/dev/null 2>&1; then
		echo "ensure-postgres: need $* but apt-get is not available; install it yourself" >&2
		exit 1
	fi
	# Wait for a concurrent apt/dpkg run instead of failing on its lock.
	local lock=(-o DPkg::Lock::Timeout=600)
	if [ "$apt_updated" -eq 0 ]; then
		echo "ensure-postgres: apt-get update" >&2
		"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${lock[@]}" update -q
		apt_updated=1
	fi
	echo "ensure-postgres: apt-get install -y $*" >&2
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${lock[@]}" install -y -q \
		--no-install-recommends "$@"
}

if ! have initdb || ! have pg_ctl || ! have postgres; then
	apt_install postgresql
fi
if ! have pgbench; then
	apt_install postgresql-contrib
fi
if [ "$want_pgbouncer" -eq 1 ] && ! have_pgbouncer; then
	apt_install pgbouncer
fi

missing=()
for b in initdb pg_ctl postgres pgbench; do
	have "$b" || missing+=("$b")
done
if [ "$want_pgbouncer" -eq 1 ] && ! have_pgbouncer; then
	missing+=(pgbouncer)
fi
if [ "${#missing[@]}" -gt 0 ]; then
	echo "ensure-postgres: still missing after install: ${missing[*]}" >&2
	exit 1
fi
