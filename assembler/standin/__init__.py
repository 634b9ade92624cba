"""Stand-in datastore container images: TEST DOUBLES of the official postgres and mariadb images.

Built from Debian packages without docker, as OCI image layouts cached per machine, for boot
tests that cannot reach Docker Hub. `standin_layout(name)` builds or reuses one.
"""

from __future__ import annotations

from assembler.standin.build import standin_layout
from assembler.standin.specs import STANDINS, StandIn

__all__ = ["STANDINS", "StandIn", "standin_layout"]
