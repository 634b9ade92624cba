"""Embedded datastore images, landed one of two ways (--embed-mode):

- docker-store: the guest's own dockerd, started inside the appliance for this step, loads the
  `docker save` archives into /var/lib/docker, so `docker image inspect` finds them at the
  first boot with nothing left to do;
- first-boot: the archives are laid where trove-image-loader loads them at the first boot,
  before the agent starts (and then removes them).

The README gives the measured first-boot delay and size of each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from assembler.config import BuildConfig, EmbedMode
from assembler.embed import GUEST_DIR, write_archives
from assembler.errors import BuildError
from assembler.facts import Facts, Prepared

STAGING = "/var/tmp/trove-image-assembler-images"

# Run by /bin/sh in the guest's root inside the appliance (libguestfs has /dev, /proc and /sys
# mounted there for the command). No bridge and no iptables: the appliance has no network for
# them, and the guest's daemon makes its own at boot.
LOAD_INTO_STORE = r"""
set -eu
mountpoint -q /run || mount -t tmpfs tmpfs /run
mountpoint -q /sys/fs/cgroup || mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p /run/containerd
containerd >/var/tmp/tia-containerd.log 2>&1 &
dockerd --iptables=false --ip6tables=false --bridge=none \
    --containerd=/run/containerd/containerd.sock --pidfile=/run/tia-dockerd.pid \
    >/var/tmp/tia-dockerd.log 2>&1 &
up=no
for _ in $(seq 1 120); do
    if docker info >/dev/null 2>&1; then up=yes; break; fi
    sleep 1
done
status=0
if [ $up = yes ]; then
    for archive in STAGING/*.tar; do
        docker load -q -i "$archive" || { status=1; break; }
    done
else
    echo "dockerd did not start:"; tail -3 /var/tmp/tia-dockerd.log; status=1
fi
kill "$(cat /run/tia-dockerd.pid 2>/dev/null)" 2>/dev/null || true
for _ in $(seq 1 60); do [ -e /run/tia-dockerd.pid ] || break; sleep 1; done
pkill -x containerd || true
for _ in $(seq 1 30); do pgrep -x containerd >/dev/null || break; sleep 1; done
exit $status
""".replace("STAGING", STAGING)

# What the build's daemon leaves that must be each instance's own: its identity and its trust
# key (a private key), its network database, its logs.
DAEMON_LEFTOVERS = (
    "/etc/docker/key.json",
    "/var/lib/docker/engine-id",
    "/var/lib/docker/network/files/local-kv.db",
    "/var/tmp/tia-containerd.log",
    "/var/tmp/tia-dockerd.log",
)


def prepare(cfg: BuildConfig, facts: Facts) -> Prepared:
    """On the host, while the appliance starts: each image as a `docker save` archive."""
    return Prepared(facts={"archives": tuple(write_archives(list(facts.embedded), facts.scratch))})


def upload(g: Any, cfg: BuildConfig, archives: tuple[tuple[Path, str], ...]) -> None:
    if cfg.embed_mode is EmbedMode.FIRST_BOOT:
        _lay_for_first_boot(g, archives)
    else:
        _load_into_store(g, archives)


def _lay_for_first_boot(g: Any, archives: tuple[tuple[Path, str], ...]) -> None:
    g.mkdir_p(GUEST_DIR)
    g.chmod(0o700, GUEST_DIR)  # root's, as docker's own store is
    for host_path, name in archives:
        dest = f"{GUEST_DIR}/{name}"
        g.upload(str(host_path), dest)
        g.chmod(0o600, dest)


def _load_into_store(g: Any, archives: tuple[tuple[Path, str], ...]) -> None:
    existed = g.exists("/etc/docker/key.json")
    g.mkdir_p(STAGING)
    for host_path, name in archives:
        g.upload(str(host_path), f"{STAGING}/{name}")
    try:
        g.sh(LOAD_INTO_STORE)
    except RuntimeError as exc:
        log = (
            g.tail_n(5, "/var/tmp/tia-dockerd.log") if g.exists("/var/tmp/tia-dockerd.log") else []
        )
        detail = str(exc).strip().splitlines()[-1]
        raise BuildError("datastore-images", f"{detail}; dockerd: {' | '.join(log)}") from exc
    finally:
        g.rm_rf(STAGING)
    for path in DAEMON_LEFTOVERS:
        if path == "/etc/docker/key.json" and existed:
            continue
        g.rm_f(path)
