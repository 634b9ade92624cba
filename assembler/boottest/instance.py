"""What Nova and Trove's taskmanager hand a new instance: metadata, user data, injected files."""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

# Where the in-guest fact gatherer and its unit live inside the instance under test.
FACTS_DIR = "/var/lib/trove-boot-check"
FACTS_UNIT = "trove-boot-check.service"
# The guest writes its facts here: the second serial port, which nothing else uses.
FACTS_PORT = "/dev/ttyS1"
OPENSTACK_VERSIONS = ("2012-08-10", "2013-04-04", "2013-10-17", "2016-06-30", "2018-08-27")
EC2_VERSIONS = ("2009-04-04", "latest")

UNIT = f"""[Unit]
Description=Trove boot test: gather facts once cloud-init is done
After=cloud-final.service docker.service network-online.target

[Service]
Type=oneshot
ExecStart=/usr/bin/python3 {FACTS_DIR}/guest_facts.py {FACTS_DIR}/expect.json
"""


@dataclass(frozen=True)
class InjectedFile:
    path: str
    content: str
    owner: str  # "user:group", as cloud-init's write_files takes it
    mode: str  # "0640"


@dataclass(frozen=True)
class Instance:
    guest_username: str
    public_key: str
    files: tuple[InjectedFile, ...]
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    hostname: str = field(default_factory=lambda: f"trove-boot-{secrets.token_hex(3)}")
    mac: str = "fa:16:3e:00:00:01"  # Nova's prefix
    has_agent: bool = False  # the gatherer then waits for the agent to start
    datastore_image: str | None = None  # the gatherer reports what docker holds under it
    # [addr, port] the guest must reach (the harness's forwards) and must not (nothing forwards).
    reachable: tuple[tuple[str, int], ...] = ()
    unreachable: tuple[tuple[str, int], ...] = ()

    def meta_data(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "name": self.hostname,
            "hostname": self.hostname,
            "launch_index": 0,
            "availability_zone": "nova",
            "project_id": "0" * 32,
            "public_keys": {"trove-boot-test": self.public_key},
            "keys": [{"name": "trove-boot-test", "type": "ssh", "data": self.public_key}],
            # As Nova lists injected ("personality") files; the content sits under content/.
            "files": [
                {"path": f.path, "content_path": f"/content/{i:04d}"}
                for i, f in enumerate(self.files)
            ],
            "meta": {},
            "devices": [],
        }

    def network_data(self) -> dict[str, Any]:
        return {
            "links": [{"id": "tap0", "type": "phy", "ethernet_mac_address": self.mac, "mtu": 1500}],
            "networks": [
                {"id": "network0", "type": "ipv4_dhcp", "link": "tap0", "network_id": self.uuid}
            ],
            "services": [],
        }

    def expect(self) -> dict[str, Any]:
        return {
            "user": self.guest_username,
            "injected": [f.path for f in self.files],
            "port": FACTS_PORT,
            "agent": self.has_agent,
            **({"datastore_image": self.datastore_image} if self.datastore_image else {}),
            # A datastore run: the agent's log follows the facts, for a failed prepare's cause.
            "follow_agent_log": bool(self.datastore_image),
            "network": {
                "reachable": [list(t) for t in self.reachable],
                "unreachable": [list(t) for t in self.unreachable],
            },
        }

    def user_data(self) -> str:
        """Trove's injected files as write_files, plus the fact gatherer and its unit."""
        gatherer = resources.files("assembler.boottest").joinpath("guest_facts.py").read_text()
        detector = resources.files("assembler").joinpath("keyscan.py").read_text()
        # The gatherer first: cloud-init stops at the first file it cannot write, and an
        # image that breaks Trove's files must still report that it did. The detector goes
        # where the gatherer's `from assembler import keyscan` finds it, as on the host.
        entries = [
            _write_file(f"{FACTS_DIR}/guest_facts.py", gatherer, "root:root", "0755"),
            _write_file(f"{FACTS_DIR}/assembler/__init__.py", "", "root:root", "0644"),
            _write_file(f"{FACTS_DIR}/assembler/keyscan.py", detector, "root:root", "0644"),
            _write_file(f"{FACTS_DIR}/expect.json", json.dumps(self.expect()), "root:root", "0644"),
            _write_file(f"/etc/systemd/system/{FACTS_UNIT}", UNIT, "root:root", "0644"),
        ] + [_write_file(f.path, f.content, f.owner, f.mode) for f in self.files]
        doc = {
            "write_files": entries,
            # --no-block: the unit is ordered after cloud-final, which is running this command.
            "runcmd": [["systemctl", "start", "--no-block", FACTS_UNIT]],
        }
        return "#cloud-config\n" + json.dumps(doc, indent=1) + "\n"

    def content_files(self) -> dict[str, str]:
        """content/NNNN -> file body, as Nova serves injected files."""
        return {f"content/{i:04d}": f.content for i, f in enumerate(self.files)}

    def ec2_meta_data(self) -> dict[str, str]:
        return {
            "instance-id": f"i-{self.uuid[:8]}",
            "ami-id": "ami-00000001",
            "hostname": self.hostname,
            "local-hostname": self.hostname,
            "placement/availability-zone": "nova",
            "public-keys/0/openssh-key": self.public_key,
        }


def _write_file(path: str, content: str, owner: str, mode: str) -> dict[str, str]:
    return {
        "path": path,
        "owner": owner,
        "permissions": mode,
        "encoding": "b64",
        "content": base64.b64encode(content.encode()).decode(),
    }


def openstack_tree(inst: Instance) -> dict[str, bytes]:
    """Paths under /openstack/ (metadata service and config drive alike) and their bodies."""
    docs = {
        "meta_data.json": json.dumps(inst.meta_data()),
        "network_data.json": json.dumps(inst.network_data()),
        "vendor_data.json": "{}",
        "vendor_data2.json": "{}",
        "user_data": inst.user_data(),
    }
    tree: dict[str, bytes] = {}
    for version in ("latest", *OPENSTACK_VERSIONS):
        for name, body in docs.items():
            tree[f"{version}/{name}"] = body.encode()
    for name, body in inst.content_files().items():
        tree[name] = body.encode()
    return tree
