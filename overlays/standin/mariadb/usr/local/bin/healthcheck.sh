#!/bin/bash
# TEST DOUBLE of the official `mariadb` image's healthcheck.sh, in trove-test-double/mariadb:
# our own small implementation of the options OpenStack Trove's agent uses,
#   healthcheck.sh [--defaults-file FILE | --defaults-extra-file FILE | --no-defaults]
#                  [--connect] [--innodb_initialized]
# Tests run in the order given; the first to fail makes the exit status 1. An unknown option is
# exit status 2, so a check the image cannot do is never reported healthy.
set -uo pipefail

client_args=()
tests=()
while [ $# -gt 0 ]; do
	case "$1" in
		--defaults-file|--defaults-extra-file)
			[ $# -ge 2 ] || { echo "healthcheck.sh: $1 needs a file" >&2; exit 2; }
			client_args=("$1=$2" "${client_args[@]}")
			shift
			;;
		--defaults-file=*|--defaults-extra-file=*|--no-defaults)
			client_args=("$1" "${client_args[@]}")
			;;
		--connect|--innodb_initialized)
			tests+=("${1#--}")
			;;
		*)
			echo "healthcheck.sh (trove test double): unsupported option $1" >&2
			exit 2
			;;
	esac
	shift
done

query() { mariadb "${client_args[@]}" --skip-column-names --batch -e "$1"; }

# The server is up when it answers; like the official script, a refused login still counts.
connect() {
	local out
	out="$(query 'SELECT 1' 2>&1)" && return 0
	case "$out" in
		*"Access denied"*) return 0 ;;
	esac
	echo "healthcheck.sh: connect failed: $out" >&2
	return 1
}

innodb_initialized() {
	local s
	s="$(query "SELECT 1 FROM information_schema.ENGINES WHERE engine = 'innodb' AND support IN ('YES', 'DEFAULT', 'ENABLED')")"
	[ "$s" = 1 ] || { echo "healthcheck.sh: InnoDB is not initialised" >&2; return 1; }
}

for t in "${tests[@]}"; do
	"$t" || exit 1
done
exit 0
