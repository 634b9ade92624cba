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

from assembler.errors import CommandError, UsageError
from assembler.publish.glance import CloudError
from assembler.publish.spec import Datastore
from assembler.run import run

log = logging.getLogger(__name__)

DEFAULT_TROVE_CONFIG = Path("/etc/trove/trove.conf")
# trove-manage prints these and still exits 0 (its handlers catch and print them).
TROVE_MANAGE_FAILURES = re.compile(
    r"cannot be found|not found|does not exist|error|Traceback", re.IGNORECASE
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


@dataclass(frozen=True)
class TroveManage:
    """The trove-manage calls for a version: the version with its image tags and no image id
    (so Trove looks the image up by tags), the datastore itself (only when it is new: given
    "" as default, trove-manage clears an existing datastore's default), the default, the
    rules."""

    version: list[str]
    datastore: list[str]
    default: list[str] | None
    rules: list[str]


def trove_manage_calls(reg: Registration) -> TroveManage:
    ds = reg.datastore
    return TroveManage(
        version=[
            "datastore_version_update", ds.name, ds.version, ds.manager, "", "", "1",
            "--image-tags", ",".join(reg.tags), "--version", ds.version,
        ],
        datastore=["datastore_update", ds.name, ""],
        default=["datastore_update", ds.name, ds.version] if reg.default else None,
        rules=[
            "db_load_datastore_config_parameters", ds.name, ds.version, reg.rules,
            "--version", ds.version,
        ],
    )  # fmt: skip


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
    except (CommandError, OSError):  # not a Python we can ask: --validation-rules then
        return None
    return Path(out) if out else None


def with_trove_manage(reg: Registration, config: Path) -> list[str]:
    """Run the calls on this controller; trove-manage's exit code says little, its words do."""
    calls = trove_manage_calls(reg)
    lines: list[str] = []

    def call(args: list[str], expect: str | None = None) -> str:
        argv = ["trove-manage", "--config-file", str(config), *args]
        said = " ".join(run(argv).split())  # its findings go to stdout, its log to stderr
        if expect is not None and (expect not in said or TROVE_MANAGE_FAILURES.search(said)):
            raise CloudError(f"{shlex.join(argv[3:])}: {said[-300:] or 'no output'}")
        lines.append(f"trove-manage {args[0]}: {said[-200:] or 'done'}")
        return said

    said = call(calls.version)
    if "cannot be found" in said:  # a new datastore: made first, with no default yet
        call(calls.datastore, expect="updated")
        said = call(calls.version, expect="updated")
    elif "updated" not in said:
        raise CloudError(f"trove-manage {calls.version[0]}: {said[-300:] or 'no output'}")
    if calls.default is not None:
        call(calls.default, expect="updated")
    call(calls.rules, expect="Loading config parameters")
    return lines


def with_management_api(conn: Any, reg: Registration) -> list[str]:
    """Create the version through Trove's management API (admin only), or update it if it
    exists. Not run by the tests: no Trove API can run here (see the README)."""
    ds = reg.datastore
    fields = {"image_tags": list(reg.tags), "active": True, "default": reg.default}
    body = {
        "version": {
            "name": ds.version, "datastore_name": ds.name, "datastore_manager": ds.manager,
            "packages": [], "version": ds.version, **fields,
        }
    }  # fmt: skip
    resp = _trove(conn, "post", "/mgmt/datastore-versions", json=body)
    if resp.status_code in (200, 202):
        return [f"Trove: datastore version {ds.name} {ds.version} created"]
    if resp.status_code != 409:
        raise CloudError(f"Trove refused the datastore version: {_said(resp)}")
    listed = _trove(conn, "get", "/mgmt/datastore-versions")
    if listed.status_code != 200:
        raise CloudError(f"Trove refused listing datastore versions: {_said(listed)}")
    ids = [
        v["id"]
        for v in listed.json().get("versions", [])
        if v.get("datastore_name") == ds.name and v.get("name") == ds.version
    ]
    if len(ids) != 1:
        raise CloudError(f"Trove says {ds.key} exists but lists {len(ids)} such versions")
    patched = _trove(conn, "patch", f"/mgmt/datastore-versions/{ids[0]}", json=fields)
    if patched.status_code not in (200, 202):
        raise CloudError(f"Trove refused updating the datastore version: {_said(patched)}")
    return [f"Trove: datastore version {ds.name} {ds.version} updated"]


def _trove(conn: Any, method: str, url: str, **kwargs: Any) -> Any:
    from keystoneauth1 import exceptions as ksa
    from openstack import exceptions as sdk

    try:
        return getattr(conn.database, method)(url, raise_exc=False, **kwargs)
    except (ksa.ClientException, sdk.SDKException) as exc:
        raise CloudError(f"Trove's management API: {exc}") from None


def _said(resp: Any) -> str:
    return f"{resp.status_code} {' '.join(resp.text.split())[:200]}"


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
    from keystoneauth1 import exceptions as ksa
    from openstack import exceptions as sdk

    try:
        return bool(conn.endpoint_for("database"))
    except (ksa.ClientException, sdk.SDKException, KeyError):  # no catalog, or no Trove in it
        return False
