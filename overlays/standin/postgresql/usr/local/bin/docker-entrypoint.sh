#!/bin/bash
# TEST DOUBLE of the official `postgres` image's entrypoint, in trove-test-double/postgresql
# (built by trove-image-assembler from Debian bookworm's packages; not the official image).
#
# It honours the part of the official contract that OpenStack Trove's guest agent relies on:
# - a first argument starting with "-" is a postgres option: the command becomes `postgres ...`;
# - for `postgres ...`: when $PGDATA holds no cluster, initdb it with the superuser
#   $POSTGRES_USER (default postgres) whose password is $POSTGRES_PASSWORD, then exec the command;
# - any other command (the agent runs pg_basebackup, pg_rewind... this way) is exec'd as it is.
# Not implemented: POSTGRES_DB, /docker-entrypoint-initdb.d, nss_wrapper for a uid without a
# passwd entry (uid 1001, the one the agent runs it as, has one: `database`).
set -Eeuo pipefail

die() {
	echo "docker-entrypoint (trove test double): error: $*" >&2
	exit 1
}

# The official image does not initialise anything when postgres is asked for help or a version.
want_help() {
	local arg
	for arg; do
		case "$arg" in
			-'?'|--help|--describe-config|-V|--version) return 0 ;;
		esac
	done
	return 1
}

if [ "${1:0:1}" = '-' ]; then
	set -- postgres "$@"
fi

if [ "$1" != postgres ] || want_help "$@"; then
	exec "$@"
fi

: "${PGDATA:?PGDATA must be set}"
POSTGRES_USER="${POSTGRES_USER:-postgres}"

# Started as root (no --user): own the data and socket directories, then drop to uid 1001, as
# the official image drops to its postgres user.
if [ "$(id -u)" = 0 ]; then
	mkdir -p "$PGDATA" /var/run/postgresql
	chown -R database:database "$PGDATA" /var/run/postgresql
	chmod 700 "$PGDATA"
	exec setpriv --reuid=database --regid=database --init-groups "$BASH_SOURCE" "$@"
fi

mkdir -p "$PGDATA"
# initdb refuses a group- or world-readable data directory; the agent makes it 0755.
chmod 700 "$PGDATA" 2>/dev/null || :

if [ ! -s "$PGDATA/PG_VERSION" ]; then
	if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "${POSTGRES_HOST_AUTH_METHOD:-}" != trust ]; then
		die "the database is uninitialized and POSTGRES_PASSWORD is not set" \
			"(set POSTGRES_HOST_AUTH_METHOD=trust to allow connections without a password)"
	fi
	echo "docker-entrypoint (trove test double): initdb into $PGDATA" >&2
	# The password goes through a pipe, never the command line.
	# shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a word list, as in the official image
	initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "${POSTGRES_PASSWORD:-}") \
		${POSTGRES_INITDB_ARGS:-}
	# Connections from elsewhere need the password, as in the official image. Trove points
	# hba_file at its own file, so this matters only without its config.
	auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
	printf '\nhost all all all %s\n' "$auth" >> "$PGDATA/pg_hba.conf"
fi

exec "$@"
