# trove-image-assembler. `make setup` then `make test`; see README.md.
SHELL := /bin/bash
PYTHON := /usr/bin/python3
VENV := .venv
VPY := $(VENV)/bin/python
# Zuul (from PyPI) in a venv of its own, its many pins kept away from ours: the fleet tests check
# the Zuul jobs `assembler matrix --emit zuul` writes with Zuul's own configuration schemas.
ZUUL_VENV := .venv-zuul
ZUUL_VERSION := 14.3.0
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Host packages: libguestfs and its Python bindings (Debian's only), a kernel for the appliance,
# QEMU and qemu-img, debootstrap for base images, sfdisk (fdisk) for their partition tables,
# socat for the boot tests' forwards, xorriso for config drives and seeds, openssl for password
# hashes, gnupg for signatures, rabbitmq-server (the boot tests run a private broker on
# loopback) and openssh-server/rsync (the boot tests play a dev-mode controller on loopback),
# docker-registry (the boot tests serve datastore images from a private registry on loopback),
# postgresql (a server the datastore client's tests start on loopback), ovmf (UEFI boots), tmux
# (a terminal the live view's test reads the screen of); guestfs-tools is virt-customize, the
# peer `make bench` measures us against.
APT_PACKAGES := libguestfs-tools guestfs-tools python3-guestfs linux-image-amd64 qemu-utils qemu-system-x86 \
	debootstrap debian-archive-keyring socat xorriso genisoimage openssh-client openssl gnupg \
	python3-venv ca-certificates util-linux fdisk rabbitmq-server iproute2 openssh-server rsync curl \
	zstd docker-registry postgresql ovmf tmux

# `make image` options, passed on only when set (trovestack's defaults otherwise).
GUEST_OS ?=
RELEASE ?=
DEV_MODE ?=
GUEST_USERNAME ?=
OUTPUT ?=
FORMAT ?=
BASE ?=
SIZE ?=
MIRROR ?=
NO_BOOT_TEST ?=
IMAGE_ARGS = $(if $(GUEST_OS),--guest-os $(GUEST_OS)) $(if $(RELEASE),--release $(RELEASE)) \
	$(if $(filter true,$(DEV_MODE)),--dev-mode) $(if $(filter false,$(DEV_MODE)),--no-dev-mode) \
	$(if $(GUEST_USERNAME),--guest-username $(GUEST_USERNAME)) $(if $(OUTPUT),-o $(OUTPUT)) \
	$(if $(FORMAT),--format $(FORMAT)) $(if $(BASE),--base $(BASE)) $(if $(SIZE),--size $(SIZE)) \
	$(if $(MIRROR),--mirror $(MIRROR)) $(if $(NO_BOOT_TEST),--no-boot-test,--boot-test)

.PHONY: setup apt-packages venv zuul-venv test test-all unit lint image bench clean

setup: apt-packages venv zuul-venv

apt-packages:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${db:Status-Abbrev}' $$p 2>/dev/null | grep -q '^ii' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		$(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	else echo "host packages: all present"; fi
	@# The boot tests start a private broker and registry on loopback; the packages' system
	@# services are not needed, and docker-registry's listens on every interface.
	@for unit in rabbitmq-server docker-registry postgresql; do \
		if [ -d /run/systemd/system ] && systemctl is-enabled --quiet $$unit 2>/dev/null; \
		then $(SUDO) systemctl disable --now $$unit; fi; done
	@# Without systemd an init script may still have started the package's own.
	@$(SUDO) pkill -f '^/usr/bin/docker-registry serve /etc/docker/registry/' || true

venv: $(VENV)/.installed

zuul-venv: $(ZUUL_VENV)/.installed-$(ZUUL_VERSION)

$(ZUUL_VENV)/.installed-$(ZUUL_VERSION):
	@[ -x $(ZUUL_VENV)/bin/python ] || $(PYTHON) -m venv $(ZUUL_VENV)
	$(ZUUL_VENV)/bin/python -m pip install -q 'zuul==$(ZUUL_VERSION)'
	touch $@

$(VENV)/.installed: pyproject.toml
	@[ -x $(VPY) ] || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(VPY) -m pip install -q -e '.[test]'
	$(VPY) -c 'import guestfs' || { echo "python3-guestfs is not visible in $(VENV)"; exit 1; }
	touch $@

lint:
	$(VENV)/bin/ruff check assembler tests benchmarks
	$(VENV)/bin/ruff format --check assembler tests benchmarks
	$(VENV)/bin/mypy

unit:
	$(VENV)/bin/pytest tests/unit

# `make test` is what CI runs: every unit test, the image tests, and one boot of each kind of
# proof (production over the bus, dev mode through a config drive, negatives with faults
# combined). `make test-all` adds what is marked `full`: each fault alone, another disk size,
# the bare base's boot. Both print the slowest tests and each boot's phases.
PYTEST_ARGS ?=
test: lint
	$(VENV)/bin/pytest -m "not full" --durations=25 $(PYTEST_ARGS)

test-all: lint
	$(VENV)/bin/pytest --durations=40 $(PYTEST_ARGS)

image:
	$(VPY) -m assembler $(IMAGE_ARGS)

# Ours against virt-customize in one run (~20 min under TCG); writes benchmarks/results/latest.json
# and the table in README.md. BENCH_ARGS e.g. "--repeat 3 --peer-runs 2".
BENCH_ARGS ?=
bench:
	$(VPY) -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
