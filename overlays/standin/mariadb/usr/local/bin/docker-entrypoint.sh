#!/bin/bash
# TEST DOUBLE of the official `mariadb` image's entrypoint, in trove-test-double/mariadb
# (built by trove-image-assembler from Debian bookworm's packages; not the official image).
#
# It honours the part of the official contract that OpenStack Trove's guest agent relies on:
# - a first argument starting with "-" is a mariadbd option: the command becomes `mariadbd ...`
#   (the agent passes `--defaults-file=/etc/mysql/my.cnf ... --datadir=...` as the command);
# - for `mariadbd ...`: when the datadir (read from the arguments and option files, as the
#   official image does) holds no `mysql` schema, mariadb-install-db it, set root's password
#   from MARIADB_ROOT_PASSWORD or MYSQL_ROOT_PASSWORD for root@localhost and root@'%', create
#   the `healthcheck` user and write <datadir>/.my-healthcheck.cnf for healthcheck.sh, then
#   exec the command;
# - any other command is exec'd as it is.
# Not implemented: MARIADB_DATABASE/USER/PASSWORD, MARIADB_RANDOM_ROOT_PASSWORD, time zone
# tables, /docker-entrypoint-initdb.d, MARIADB_AUTO_UPGRADE (the agent sets it; an existing
# datadir is started as it is, and a missing .my-healthcheck.cnf is not regenerated).
set -Eeuo pipefail

say() { echo "docker-entrypoint (trove test double): $*" >&2; }
die() {
	say "error: $*"
	exit 1
}

want_help() {
	local arg
	for arg; do
		case "$arg" in
			-'?'|--help|--print-defaults|-V|--version) return 0 ;;
		esac
	done
	return 1
}

# The value mariadbd itself would use for an option, given these arguments and option files.
get_config() {
	local name="$1"
	shift
	"$@" --verbose --help 2>/dev/null | awk -v name="$name" '$1 == name && NF == 2 { print $2; exit }'
}

# A string made safe inside '...' in SQL.
sql_escape() {
	local s="${1//\\/\\\\}"
	printf '%s' "${s//\'/\\\'}"
}

if [ "${1:0:1}" = '-' ]; then
	set -- mariadbd "$@"
fi

if { [ "$1" != mariadbd ] && [ "$1" != mysqld ]; } || want_help "$@"; then
	exec "$@"
fi

datadir="$(get_config datadir "$@")"
socket="$(get_config socket "$@")"
port="$(get_config port "$@")"
[ -n "$datadir" ] || die "mariadbd rejects these arguments or option files: $(mariadbd "${@:2}" --verbose --help 2>&1 >/dev/null | head -n 3)"
datadir="${datadir%/}"
socket="${socket:-/run/mysqld/mysqld.sock}"

# Started as root (no --user): own the directories, then drop to uid 1001, as the official
# image drops to its mysql user.
if [ "$(id -u)" = 0 ]; then
	mkdir -p "$datadir" "$(dirname "$socket")"
	chown -R database:database "$datadir" "$(dirname "$socket")"
	exec setpriv --reuid=database --regid=database --init-groups "$BASH_SOURCE" "$@"
fi

if [ ! -d "$datadir/mysql" ]; then
	root_password="${MARIADB_ROOT_PASSWORD:-${MYSQL_ROOT_PASSWORD:-}}"
	if [ -z "$root_password" ] && [ -z "${MARIADB_ALLOW_EMPTY_ROOT_PASSWORD:-${MYSQL_ALLOW_EMPTY_PASSWORD:-}}" ]; then
		die "the database is uninitialized and MARIADB_ROOT_PASSWORD (or MYSQL_ROOT_PASSWORD) is not set"
	fi
	say "mariadb-install-db into $datadir"
	mkdir -p "$datadir"
	# mariadb-install-db wants --defaults-file first; the other server options follow, as the
	# official image passes them, so it initialises with the same settings the server runs with.
	install_args=()
	server_args=()
	for arg in "${@:2}"; do
		case "$arg" in
			--defaults-file=*|--defaults-extra-file=*|--no-defaults) install_args+=("$arg") ;;
			*) server_args+=("$arg") ;;
		esac
	done
	mariadb-install-db "${install_args[@]}" --datadir="$datadir" --auth-root-authentication-method=normal \
		--skip-test-db --skip-log-bin --expire-logs-days=0 --default-time-zone=SYSTEM \
		--enforce-storage-engine= "${server_args[@]}" >/dev/null

	# A temporary server on the socket only, to set passwords; it must never listen on TCP.
	"$@" --skip-networking --socket="$socket" --skip-slave-start --default-time-zone=SYSTEM &
	pid=$!
	sql() { mariadb --no-defaults --protocol=socket --socket="$socket" -uroot "$@"; }
	for _ in $(seq 60); do
		if sql -e 'SELECT 1' >/dev/null 2>&1; then break; fi
		kill -0 "$pid" 2>/dev/null || die "the temporary server died during initialisation"
		sleep 1
	done
	sql -e 'SELECT 1' >/dev/null || die "the temporary server did not come up within 60 s"

	root="$(sql_escape "$root_password")"
	# A finite read: `tr </dev/urandom | head` would die of SIGPIPE under pipefail.
	health_password="$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
	root_host="$(sql_escape "${MARIADB_ROOT_HOST:-%}")"
	# Passwords go through stdin, never the command line.
	sql <<-SQL
		SET @@SESSION.SQL_LOG_BIN=0;
		DELETE FROM mysql.user WHERE user NOT IN ('mysql.sys', 'mariadb.sys', 'root') OR host NOT IN ('localhost');
		SET PASSWORD FOR 'root'@'localhost' = PASSWORD('$root');
		CREATE USER 'root'@'$root_host' IDENTIFIED BY '$root';
		GRANT ALL ON *.* TO 'root'@'$root_host' WITH GRANT OPTION;
		GRANT PROXY ON ''@'%' TO 'root'@'$root_host' WITH GRANT OPTION;
		CREATE USER 'healthcheck'@'127.0.0.1' IDENTIFIED BY '$health_password',
			'healthcheck'@'::1' IDENTIFIED BY '$health_password',
			'healthcheck'@'localhost' IDENTIFIED BY '$health_password';
		GRANT USAGE ON *.* TO 'healthcheck'@'127.0.0.1', 'healthcheck'@'::1', 'healthcheck'@'localhost';
		FLUSH PRIVILEGES;
	SQL
	(
		umask 077
		printf '[mariadb-client]\nport=%s\nsocket=%s\nuser=healthcheck\npassword=%s\n' \
			"${port:-3306}" "$socket" "$health_password" > "$datadir/.my-healthcheck.cnf"
	)
	kill "$pid"
	wait "$pid" || :
	say "initialisation done"
fi

exec "$@"
