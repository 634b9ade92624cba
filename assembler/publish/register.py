"""The datastore version in Trove that finds the published image by its tags, and the
manager's configuration validation rules: through `trove-manage` on a controller (as the
original document and devstack do), through Trove's management API where the cloud grants it,
or else printed for the operator to run."""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assembler.errors import UsageError
from assembler.publish.glance import CloudError
from assembler.publish.spec import Datastore
from assembler.run import run

log = logging.getLogger(__name__)

DEFAULT_TROVE_CONFIG = Path("/etc/trove/trove.conf")
# trove-manage prints these and still exits 0 (its handlers catch and print them).
TROVE_MANAGE_FAILURES = re.compile(
    r"not found|could not be found|does not exist|error|Traceback", re.IGNORECASE
)


@dataclass(frozen=True)
class Registration:
    datastore: Datastore
    tags: tuple[str, ...]
    default: bool
    rules: str  # path of the manager's validation-rules.json (as the controller has it)


def rules_path(manager: str, trove_package: Path | None) -> str:
    """Where the trove package keeps the manager's rules; a placeholder to fill in otherwise."""
    if trove_package is None:
        return f"${{trove_repo_dir}}/trove/templates/{manager}/validation-rules.json"
    return str(trove_package / "templates" / manager / "validation-rules.json")


def trove_manage_argvs(reg: Registration, config: Path | None) -> list[list[str]]:
    """The trove-manage calls, in order: the datastore, its version with the image tags and no
    image id (so Trove looks the image up by tags), the default version, the rules."""
    ds = reg.datastore
    head = ["trove-manage", *(["--config-file", str(config)] if config else [])]
    argvs = [
        [*head, "datastore_update", ds.name, ""],
        [
            *head, "datastore_version_update", ds.name, ds.version, ds.manager, "", "", "1",
            "--image-tags", ",".join(reg.tags), "--version", ds.version,
        ],
    ]  # fmt: skip
    if reg.default:
        argvs.append([*head, "datastore_update", ds.name, ds.version])
    rules = [*head, "db_load_datastore_config_parameters", ds.name, ds.version, reg.rules]
    argvs.append([*rules, "--version", ds.version])
    return argvs


def openstack_commands(reg: Registration) -> list[str]:
    """What the original document has the operator type, for this datastore version."""
    ds = reg.datastore
    create = [
        "openstack", "datastore", "version", "create", ds.version, ds.name, ds.manager, "",
        "--image-tags", ",".join(reg.tags), "--active", *(["--default"] if reg.default else []),
    ]  # fmt: skip
    rules = ["trove-manage", "db_load_datastore_config_parameters", ds.name, ds.version, reg.rules]
    return [shlex.join(create), shlex.join(rules)]


def trove_package_of(trove_manage: str) -> Path | None:
    """The trove package trove-manage runs from (its rules are there), read from its
    interpreter: the controller's trove may live in a venv of its own."""
    with open(trove_manage, "rb") as f:
        first = f.readline().decode(errors="replace")
    if not first.startswith("#!"):
        return None
    python = shlex.split(first[2:].strip())
    code = "import os, trove; print(os.path.dirname(trove.__file__))"
    try:
        out = run([*python, "-c", code]).strip()
    except Exception:  # not a Python we can ask: the operator gives --validation-rules
        return None
    return Path(out) if out else None


def with_trove_manage(reg: Registration, config: Path) -> list[str]:
    """Run the calls on this controller; trove-manage's exit code says nothing, its words do."""
    lines = []
    for argv in trove_manage_argvs(reg, config):
        out = run(argv)  # its findings go to stdout, its log to stderr
        said = " ".join(out.split())
        if TROVE_MANAGE_FAILURES.search(said):
            raise CloudError(f"{shlex.join(argv[1:])}: {said[-300:]}")
        lines.append(f"trove-manage {argv[3]}: {said[-200:] or 'done'}")
    return lines


def with_management_api(conn: Any, reg: Registration) -> list[str]:
    """Create or update the version through Trove's management API (admin only)."""
    ds = reg.datastore
    body = {
        "version": {
            "name": ds.version, "datastore_name": ds.name, "datastore_manager": ds.manager,
            "image_tags": list(reg.tags), "packages": [], "active": True,
            "default": reg.default, "version": ds.version,
        }
    }  # fmt: skip
    try:
        resp = conn.database.post("/mgmt/datastore-versions", json=body, raise_exc=False)
    except Exception as exc:
        raise CloudError(f"Trove's management API: {exc}") from None
    if resp.status_code not in (200, 202):
        raise CloudError(
            f"Trove refused the datastore version: {resp.status_code} {resp.text[:200]}"
        )
    return [f"Trove: datastore version {ds.name} {ds.version} created"]


def route(where: str, config: Path | None, conn: Any) -> tuple[str, Path | None]:
    """How to register, checked before anything changes in the cloud: trove-manage (with its
    trove.conf), api, or print. `where`: auto, trove-manage, api or print."""
    if where == "print":
        return "print", None
    if config is not None and where == "auto":
        where = "trove-manage"  # a trove.conf named: this is the controller
    config = config or (DEFAULT_TROVE_CONFIG if DEFAULT_TROVE_CONFIG.is_file() else None)
    manage = shutil.which("trove-manage")
    if where == "trove-manage" or (where == "auto" and manage and config):
        if not manage:
            raise UsageError("trove-manage is not on PATH (it runs on Trove's controller)")
        if config is None or not config.is_file():
            raise UsageError(f"--trove-config {config or DEFAULT_TROVE_CONFIG}: no such file")
        if not os.access(config, os.R_OK):
            raise UsageError(f"--trove-config {config}: not readable")
        return "trove-manage", config
    if where == "api" or (where == "auto" and _has_trove_api(conn)):
        return "api", None
    return "print", None


def register(
    reg: Registration, conn: Any, how: str, config: Path | None
) -> tuple[list[str], list[str]]:
    """(what was done, what is left for the operator to run)."""
    if how == "trove-manage" and config is not None:
        return with_trove_manage(reg, config), []
    if how == "api":
        # The management API has no call for the validation rules: trove-manage loads them.
        return with_management_api(conn, reg), openstack_commands(reg)[1:]
    return [], openstack_commands(reg)


def _has_trove_api(conn: Any) -> bool:
    """Whether the cloud's catalog lists Trove (the database service)."""
    try:
        return bool(conn.endpoint_for("database"))
    except Exception:  # no catalog (no Keystone), or no such service
        return False
