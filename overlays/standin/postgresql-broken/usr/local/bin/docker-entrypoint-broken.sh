#!/bin/sh
# TEST DOUBLE with a fault, in trove-test-double/postgresql-broken: the image is the working
# stand-in for the official `postgres` image, but this entrypoint dies at once, as a datastore
# image whose entrypoint fails would. It exists for negative tests of the boot test.
echo "docker-entrypoint (trove test double, broken on purpose): refusing to start postgres" \
	"(args: $*)" >&2
exit 1
