"""The postgresql-broken variant: the working image's layer, plus an entrypoint that dies."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.standin.container import container_argv, image_config, make_dir, unpack

COMMAND = ["postgres", "-c", "config_file=/etc/postgresql/postgresql.conf"]


def test_entrypoint_exits_non_zero_at_once(broken_layout: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    config = unpack(broken_layout, root)
    make_dir(root, "/var/lib/postgresql/data/pgdata")
    env = {"POSTGRES_PASSWORD": "pw", "PGDATA": "/var/lib/postgresql/data/pgdata"}
    out = subprocess.run(container_argv(root, config, env, COMMAND), capture_output=True,
                         text=True, timeout=60, check=False)  # fmt: skip
    assert out.returncode != 0
    assert "broken on purpose" in out.stderr
    assert not any((root / "var/lib/postgresql/data/pgdata").iterdir())


def test_shares_the_working_images_layer(broken_layout: Path, postgresql_layout: Path) -> None:
    broken, good = image_config(broken_layout), image_config(postgresql_layout)
    assert broken["_layers"][:-1] == good["_layers"]
    assert len(broken["_layers"]) == len(good["_layers"]) + 1
    assert broken["rootfs"]["diff_ids"][:-1] == good["rootfs"]["diff_ids"]
    assert broken["config"]["Entrypoint"] == ["docker-entrypoint-broken.sh"]
    assert broken["config"]["Cmd"] == good["config"]["Cmd"]
    # The shared blob is a hard link, not a second copy.
    digest = good["_layers"][0].split(":")[1]
    assert (broken_layout / "blobs/sha256" / digest).samefile(
        postgresql_layout / "blobs/sha256" / digest
    )
