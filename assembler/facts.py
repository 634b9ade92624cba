"""The facts a build hands its steps besides the config, and what a layer's host work returns.

Kept apart from the machinery that runs layers (assembler.stack): step modules import these
types, and what a step imports is part of its layer's code.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Facts:
    """What a build knows besides its config, handed to the steps that name it."""

    base_sha256: str = ""
    base_facts: Any = None  # assembler.basefacts.BaseFacts, when cached for this base
    root: str = ""  # the guest's root device
    mounts: dict[str, str] = field(default_factory=dict)
    firmware: tuple[str, ...] = ()  # what the disk boots with: "bios", "uefi"
    embedded: tuple[Any, ...] = ()  # assembler.embed.Fetched
    wheelhouse: Any = None  # assembler.agent.wheelhouse.Wheelhouse
    dev_key: Any = None  # assembler.agent.devkeys.KeyPair (dev mode)
    ephemeral_key: bool = False  # the dev key was made for this build alone
    host_packages: Any = None  # assembler.hostapt.Fetched, once the host has the packages
    archives: tuple[tuple[Path, str], ...] = ()  # datastore images, written for upload
    payload: Any = None  # assembler.agent.payload.AgentPayload, laid out for upload
    scratch: Path = Path("/nonexistent")  # the layer's own scratch directory on the host

    def learn(self, found: dict[str, Any] | None) -> Facts:
        return replace(self, **found) if found else self


FACT_NAMES = frozenset(f.name for f in fields(Facts))


@dataclass(frozen=True)
class Prepared:
    """A layer's host work, done while its appliance starts: facts for its steps, and what
    goes into its record."""

    facts: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
