"""Real builds from the Debian base, checked on the real output with guestfs."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.builds import Built, Inspector

pytestmark = pytest.mark.image

IMAGES = {
    # fixture: (format qemu-img reports, guest user, datasource line, manage_etc_hosts)
    "raw_production": ("raw", "ubuntu", "[ ConfigDrive, OpenStack ]", "localhost"),
    "qcow2_custom": ("qcow2", "trove", "[ OpenStack ]", "false"),
    "vmdk_dev": ("vmdk", "ubuntu", "[ ConfigDrive, OpenStack ]", "localhost"),
}


@pytest.fixture(params=sorted(IMAGES))
def case(request: pytest.FixtureRequest, inspect: Inspector) -> tuple[Built, Any, tuple[str, ...]]:
    built: Built = request.getfixturevalue(request.param)
    expected = IMAGES[request.param]
    return built, inspect(built.image, expected[0]), expected


def qemu_info(image: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", image], capture_output=True, text=True, check=True
    ).stdout
    return dict(json.loads(out))


def entries(g: Any, path: str) -> dict[str, list[str]]:
    """/etc/passwd, /etc/shadow or /etc/group as {name: fields}."""
    return {line.split(":")[0]: line.split(":") for line in g.cat(path).splitlines()}


def test_output_format_and_manifest(case: tuple[Built, Any, tuple[str, ...]]) -> None:
    built, _, (fmt, user, _, _) = case
    info = qemu_info(built.image)
    assert info["format"] == fmt
    assert "backing-filename" not in info
    m = built.manifest
    assert m["output"]["format"] == fmt
    assert m["output"]["size"] == built.image.stat().st_size
    assert m["inputs"]["guest_username"] == user
    assert m["inputs"]["release"] == "bookworm"
    assert m["inputs"]["accel"] == "tcg"
    assert len(m["base"]["sha256"]) == 64
    names = [s["name"] for s in m["steps"]]
    assert names[-1] == "convert"
    # Steps of the layers this build made (a layer reused from the cache lists none).
    built_layers = [layer["name"] for layer in m["layers"] if not layer["cached"]]
    if "system" in built_layers:
        # The host work the system layer does while its appliance starts comes first.
        assert names[:2] == ["system-prepare", "launch"] and "packages" in names
    if "config" in built_layers:
        assert {"guest-user", "hygiene", "trim"} <= set(names)
    if "agent" in built_layers:
        assert {"agent-prepare", "agent-venv"} <= set(names)
    assert all(s["seconds"] >= 0 for s in m["steps"])
    assert re.match(r"^\d", m["packages"]["docker.io"])
    assert "cloud-init" in m["packages"]
    if fmt == "qcow2":  # compressed by default, as trovestack's
        check = subprocess.run(
            ["qemu-img", "check", "--output=json", built.image],
            capture_output=True,
            text=True,
            check=False,
        )
        assert json.loads(check.stdout).get("compressed-clusters", 0) > 0
        assert m["inputs"]["compression"] == "zlib"
    # Nothing temporary is left beside the output.
    assert not [p for p in built.image.parent.iterdir() if p.name.endswith(".partial")]


def test_docker_installed_and_enabled(case: tuple[Built, Any, tuple[str, ...]]) -> None:
    _, g, (_, user, _, _) = case
    # Debian's docker.io keeps the daemon in /usr/sbin, docker-ce in /usr/bin.
    assert g.is_file("/usr/sbin/dockerd") or g.is_file("/usr/bin/dockerd")
    wants = "/etc/systemd/system/multi-user.target.wants"
    assert g.is_symlink(f"{wants}/docker.service")
    assert g.is_symlink(f"{wants}/containerd.service")
    assert user in entries(g, "/etc/group")["docker"][3].split(",")


def test_datasources_and_etc_hosts(case: tuple[Built, Any, tuple[str, ...]]) -> None:
    _, g, (_, _, datasources, etc_hosts) = case
    text = g.cat("/etc/cloud/cloud.cfg.d/91-trove-datasources.cfg")
    assert f"datasource_list: {datasources}\n" in text
    assert f"manage_etc_hosts: {etc_hosts}" in g.cat(
        "/etc/cloud/cloud.cfg.d/93-trove-etc-hosts.cfg"
    )


def test_guest_user(case: tuple[Built, Any, tuple[str, ...]]) -> None:
    _, g, (_, user, _, _) = case
    passwd = entries(g, "/etc/passwd")
    assert user in passwd
    assert passwd[user][6] == "/bin/bash"
    assert g.is_dir(f"/home/{user}")
    assert entries(g, "/etc/shadow")[user][1].startswith("!"), "the guest user has no password"
    assert user in entries(g, "/etc/group")["sudo"][3].split(",")
    sudoers = "/etc/sudoers.d/60_trove_guest"
    assert f"{user} ALL=(ALL) NOPASSWD:ALL" in g.cat(sudoers)
    st = g.statns(sudoers)
    assert (st["st_mode"] & 0o7777, st["st_uid"], st["st_gid"]) == (0o440, 0, 0)
    cfg = g.cat("/etc/cloud/cloud.cfg.d/92-trove-default-user.cfg")
    assert f"name: {user}" in cfg


def test_trove_directories(case: tuple[Built, Any, tuple[str, ...]]) -> None:
    _, g, (_, user, _, _) = case
    uid = int(entries(g, "/etc/passwd")[user][2])
    for path in ("/etc/trove", "/etc/trove/conf.d", "/etc/trove/certs", "/var/lib/trove",
                 "/var/log/trove", "/opt/trove-guestagent"):  # fmt: skip
        st = g.statns(path)
        assert (st["st_uid"], st["st_gid"]) == (uid, 0), path


def test_hygiene(case: tuple[Built, Any, tuple[str, ...]]) -> None:
    _, g, _ = case
    assert g.is_file("/etc/machine-id") and g.filesize("/etc/machine-id") == 0
    assert g.glob_expand("/etc/ssh/ssh_host_*") == []
    assert g.glob_expand("/var/lib/cloud/*") == []
    assert not g.exists("/usr/sbin/policy-rc.d")
    assert not g.exists("/etc/dpkg/dpkg.cfg.d/assembler-unsafe-io")
    assert not g.exists("/var/tmp/assembler-apt")
    assert [f for f in g.ls("/var/lib/apt/lists") if f not in ("lock", "partial")] == []
    assert g.glob_expand("/var/cache/apt/archives/*.deb") == []
    assert not g.exists("/var/lib/systemd/random-seed")
    logs = [f for f in g.find("/var/log") if g.is_file(f"/var/log/{f}")]
    assert all(g.filesize(f"/var/log/{f}") == 0 for f in logs)
    # The guest's own apt sources are untouched by the build.
    assert "deb" in g.cat("/etc/apt/sources.list")


def test_root_filesystem_grown(case: tuple[Built, Any, tuple[str, ...]]) -> None:
    built, g, _ = case
    disk = built.manifest["output"]["virtual_size"]
    assert disk == built.manifest["inputs"]["size_bytes"]
    # inspect_get_roots, not inspect_os: a new inspection unmounts the shared handle.
    root = g.inspect_get_roots()[0]
    device, partnum = g.part_to_dev(root), g.part_to_partnum(root)
    parts = sorted(g.part_list(device), key=lambda p: p["part_start"])
    assert parts[-1]["part_num"] == partnum
    # The partition ends within alignment and the GPT backup of the disk's end...
    assert disk - parts[-1]["part_end"] < 2 * 1024**2, (parts[-1], disk)
    # ...and the filesystem fills the partition.
    tune = g.tune2fs_l(root)
    fs_bytes = int(tune["Block count"]) * int(tune["Block size"])
    assert parts[-1]["part_size"] - fs_bytes < int(tune["Block size"]), (fs_bytes, parts[-1])


def test_root_password_hashed_only_when_asked(
    raw_production: Built, vmdk_dev: Built, inspect: Inspector
) -> None:
    root = entries(inspect(raw_production.image, "raw"), "/etc/shadow")["root"][1]
    assert root.startswith("$6$")
    # The clear text is nowhere on the disk, not even in freed blocks.
    found = subprocess.run(["grep", "-q", "-a", "-F", "Sup3r-secret-root", raw_production.image])
    assert found.returncode == 1
    manifest_text = json.dumps(raw_production.manifest)
    assert "Sup3r-secret-root" not in manifest_text and root not in manifest_text
    dev_root = entries(inspect(vmdk_dev.image, "vmdk"), "/etc/shadow")["root"][1]
    assert dev_root in ("*", "!", "!*")


def test_no_secret_in_the_manifest_or_the_debug_log(raw_production: Built, vmdk_dev: Built) -> None:
    """Both builds ran with --debug: every command and step is in their stderr."""
    from assembler.agent.devkeys import key_paths

    assert "run: " in raw_production.stderr  # it is the debug log
    for built in (raw_production, vmdk_dev):
        manifest_text = json.dumps(built.manifest)
        for text in (manifest_text, built.stderr):
            assert "Sup3r-secret-root" not in text
            assert "PRIVATE KEY-----" not in text  # a key's armour (the log names the pattern)
    private = key_paths(vmdk_dev.image)[0].read_text()
    body = [line for line in private.splitlines() if line and "PRIVATE KEY" not in line]
    assert len(body) >= 3
    for line in body:
        assert line not in vmdk_dev.stderr and line not in json.dumps(vmdk_dev.manifest)


def test_base_is_never_modified(debian_base: Path, raw_production: Built) -> None:
    from assembler.manifest import sha256_file

    assert sha256_file(debian_base) == raw_production.manifest["base"]["sha256"]


def test_production_agent_is_baked(raw_production: Built, inspect: Inspector) -> None:
    g = inspect(raw_production.image, "raw")
    agent = raw_production.manifest["agent"]
    assert agent["mode"] == "production" and agent["baked"] is True
    assert agent["version"] == "26.0.0" and agent["python"] == "3.11"
    assert len(agent["wheels"]) > 100 and all(len(h) == 64 for h in agent["wheels"].values())
    venv = "/opt/guest-agent-venv"
    assert g.readlink(f"{venv}/bin/python3") == "/usr/bin/python3.11"
    assert g.is_file(f"{venv}/lib/python3.11/site-packages/trove/cmd/guest.py")
    assert g.readlink("/usr/local/bin/guest-agent") == f"{venv}/bin/trove-guestagent"
    assert g.head_n(1, f"{venv}/bin/trove-guestagent") == [f"#!{venv}/bin/python3"]
    uid = int(entries(g, "/etc/passwd")["ubuntu"][2])
    assert g.statns(venv)["st_uid"] == uid
    wants = "/etc/systemd/system/multi-user.target.wants"
    for unit in ("guest-agent.service", "trove-image-loader.service"):
        assert g.is_symlink(f"{wants}/{unit}"), unit
    assert g.is_symlink("/etc/systemd/system/sockets.target.wants/docker-hostnic.socket")
    assert "User=ubuntu" in g.cat("/etc/systemd/system/guest-agent.service")
    assert "/var/log/trove/trove-guestagent.log" in g.cat("/etc/logrotate.d/guest-agent")
    # No private key at all in a production image; the fixtures some packages ship are gone.
    assert raw_production.manifest["private_keys"] == []
    for path in agent["removed_test_keys"]:
        assert not g.exists(path)
    assert not g.exists("/home/ubuntu/.ssh/id_ed25519")
    # The dependencies' test suites are not uploaded (assembler/agent/slim.py).
    assert agent["slimmed"]["removed_dirs"] > 40
    site = f"{venv}/lib/python3.11/site-packages"
    assert not g.exists(f"{site}/trove/tests") and g.is_dir(f"{site}/trove/guestagent/datastore")


def test_dev_agent_fetches_its_code(vmdk_dev: Built, inspect: Inspector) -> None:
    g = inspect(vmdk_dev.image, "vmdk")
    m = vmdk_dev.manifest
    assert m["agent"]["mode"] == "dev" and m["agent"]["baked"] is False
    venv = "/opt/guest-agent-venv/lib/python3.11/site-packages"
    assert g.is_dir(f"{venv}/oslo_messaging") and not g.exists(f"{venv}/trove")
    assert g.is_file("/opt/guest-agent-venv/bin/pip")
    assert g.glob_expand("/opt/guest-agent-wheels/trove-*.whl") == []
    assert len(g.glob_expand("/opt/guest-agent-wheels/*.whl")) > 100
    unit = g.cat("/etc/systemd/system/guest-agent.service")
    assert "EnvironmentFile=/etc/trove/controller.conf" in unit
    assert "ExecStartPre=/usr/local/sbin/trove-dev-fetch" in unit
    assert "contrib/trove-guestagent" in unit
    # The build's own key pair: installed for the guest user, declared, kept beside the image.
    key = "/home/ubuntu/.ssh/id_ed25519"
    assert m["private_keys"] == [key]
    st = g.statns(key)
    uid = int(entries(g, "/etc/passwd")["ubuntu"][2])
    assert (st["st_mode"] & 0o777, st["st_uid"]) == (0o600, uid)
    public = m["agent"]["dev_public_key"]
    assert public in g.cat("/home/ubuntu/.ssh/authorized_keys")
    beside = vmdk_dev.image.with_name(vmdk_dev.image.name + ".dev-key")
    assert beside.stat().st_mode & 0o777 == 0o600
    assert g.cat(key).encode() == beside.read_bytes()


def test_base_archive_is_the_base_built_from_the_archive(
    raw_production: Built, debian_base: Path, images_dir: Path
) -> None:
    """`--base archive` as root: the base from Debian's archive, built once per machine and
    cached (the session's Debian base is that very one), then the build as usual; with the
    same options as raw_production every layer is reused."""
    from tests.builds import run_cli

    out = images_dir / "from-archive.qcow2"
    proc = run_cli(
        "--guest-os", "debian", "--release", "bookworm", "--base", "archive", "-o", str(out),
        "--no-dev-mode", env={"TROVE_ROOT_PASSWORD": "Sup3r-secret-root"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
    assert manifest["base"]["origin"] == "archive"
    assert manifest["base"]["path"] == str(debian_base)
    assert manifest["base"]["url"] == "http://deb.debian.org/debian"
    assert manifest["base"]["sha256"] == raw_production.manifest["base"]["sha256"]
    assert all(layer["cached"] for layer in manifest["layers"]), manifest["layers"]
    assert manifest["firmware"] == ["bios", "uefi"]
