"""Glance's image API (v2), through openstacksdk's session for the cloud: the few calls a
publish makes, each failing as one CloudError line that names the call.

The REST calls are made here rather than through openstacksdk's image resources so that each is
explicit: an upload that streams from our reader (which stops on an interrupt), JSON patches
that set only our properties, and listings filtered by Glance itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from assembler.errors import AssemblerError, UsageError

log = logging.getLogger(__name__)

# Glance's own fields; everything else on an image is a property.
FIELDS = frozenset(
    {
        "id", "name", "status", "tags", "created_at", "updated_at", "size", "virtual_size",
        "checksum", "os_hash_algo", "os_hash_value", "disk_format", "container_format",
        "visibility", "protected", "owner", "min_disk", "min_ram", "self", "file", "schema",
        "locations", "direct_url", "os_hidden", "stores",
    }
)  # fmt: skip
PATCH = "application/openstack-images-v2.1-json-patch"


class Readable(Protocol):
    def read(self, n: int = -1) -> bytes: ...

    def __len__(self) -> int: ...


class CloudError(AssemblerError):
    """The cloud could not be reached, refused a request, or stored something else than sent."""


@dataclass(frozen=True)
class Image:
    id: str
    name: str
    status: str
    tags: tuple[str, ...]
    created_at: str
    size: int | None
    checksum: str | None
    os_hash_algo: str | None
    os_hash_value: str | None
    disk_format: str | None
    properties: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Image:
        return cls(
            id=doc["id"],
            name=doc.get("name") or "",
            status=doc["status"],
            tags=tuple(doc.get("tags") or ()),
            created_at=doc.get("created_at") or "",
            size=doc.get("size"),
            checksum=doc.get("checksum"),
            os_hash_algo=doc.get("os_hash_algo"),
            os_hash_value=doc.get("os_hash_value"),
            disk_format=doc.get("disk_format"),
            properties={k: str(v) for k, v in doc.items() if k not in FIELDS},
        )

    def label(self) -> str:
        return f"{self.id} ({self.name})"


def connect(cloud: str | None) -> Any:
    """The cloud as every OpenStack tool finds it: --os-cloud, else OS_CLOUD, with clouds.yaml;
    else the OS_* variables."""
    import openstack
    from openstack import exceptions

    try:
        return openstack.connect(cloud=cloud)
    except exceptions.ConfigException as exc:
        raise UsageError(f"cloud configuration: {exc}") from None


class Glance:
    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self._api: Any = None

    @property
    def api(self) -> Any:
        """A keystoneauth adapter on the cloud's image endpoint, found (and its version
        discovered) at the first call."""
        if self._api is None:
            self._api = _guarded("finding the image service", lambda: self.conn.image)
        return self._api

    def _call(
        self,
        method: str,
        url: str,
        what: str,
        ok: tuple[int, ...] = (200,),
        **kwargs: Any,
    ) -> Any:
        resp = _guarded(what, lambda: self.api.request(url, method, raise_exc=False, **kwargs))
        if resp.status_code not in ok:
            raise CloudError(f"Glance refused {what}: {resp.status_code} {_reason(resp)}")
        return resp

    def images(self, **filters: str | list[str]) -> list[Image]:
        """Every image the filters select (tag is ANDed when repeated), newest first; read
        whole before anyone changes them. Paged with our own parameters and a marker: Glance's
        `next` link keeps only the last of repeated `tag` parameters."""
        params: dict[str, Any] = {"sort": "created_at:desc", "limit": 100, **filters}
        found: list[Image] = []
        while True:
            page = [
                Image.from_json(d)
                for d in self._json("GET", "/images", "listing images", params=params).get(
                    "images", ()
                )
            ]
            found += page
            if len(page) < params["limit"]:
                return found
            params = {**params, "marker": page[-1].id}

    def _json(self, method: str, url: str, what: str, **kwargs: Any) -> dict[str, Any]:
        resp = self._call(method, url, what, **kwargs)
        try:
            doc = resp.json()
        except ValueError:
            raise CloudError(f"{what}: the answer is not JSON ({resp.text[:100]!r})") from None
        if not isinstance(doc, dict):
            raise CloudError(f"{what}: an unexpected answer ({str(doc)[:100]})")
        return doc

    def get(self, image_id: str) -> Image:
        return Image.from_json(self._json("GET", f"/images/{image_id}", "reading the image"))

    def create(self, body: dict[str, Any]) -> Image:
        doc = self._json("POST", "/images", "creating the image", ok=(201,), json=body)
        return Image.from_json(doc)

    def upload(self, image_id: str, data: Readable) -> None:
        self._call(
            "PUT",
            f"/images/{image_id}/file",
            "uploading the image data",
            ok=(204,),
            data=data,
            headers={"Content-Type": "application/octet-stream"},
            connect_retries=0,  # a stream half read cannot be sent again
        )

    def delete(self, image_id: str) -> None:
        self._call("DELETE", f"/images/{image_id}", f"deleting {image_id}", ok=(204,))

    def set_properties(self, image: Image, props: dict[str, str | None]) -> None:
        """Set (None: remove) properties of ours on image with one JSON patch."""
        ops: list[dict[str, Any]] = []
        for key, value in props.items():
            if value is None:
                if key in image.properties:
                    ops.append({"op": "remove", "path": f"/{key}"})
            elif image.properties.get(key) != value:
                op = "replace" if key in image.properties else "add"
                ops.append({"op": op, "path": f"/{key}", "value": value})
        if ops:
            self._call(
                "PATCH",
                f"/images/{image.id}",
                f"updating the properties of {image.id}",
                json=ops,
                headers={"Content-Type": PATCH},
            )

    def add_tag(self, image_id: str, tag: str) -> None:
        self._call("PUT", f"/images/{image_id}/tags/{tag}", f"tagging {image_id}", ok=(204,))

    def remove_tag(self, image_id: str, tag: str) -> None:
        self._call(
            "DELETE", f"/images/{image_id}/tags/{tag}", f"untagging {image_id}", ok=(204, 404)
        )

    def deactivate(self, image_id: str) -> None:
        url = f"/images/{image_id}/actions/deactivate"
        self._call("POST", url, f"deactivating {image_id}", ok=(204,))

    def reactivate(self, image_id: str) -> None:
        url = f"/images/{image_id}/actions/reactivate"
        self._call("POST", url, f"reactivating {image_id}", ok=(204,))


def _guarded(what: str, call: Callable[[], Any]) -> Any:
    """call(), its failures to reach or find the cloud as one CloudError line."""
    from keystoneauth1 import exceptions as ksa
    from openstack import exceptions as sdk

    unreachable = (ksa.ConnectionError, ksa.DiscoveryFailure, ksa.EndpointNotFound)
    try:
        return call()
    except (ksa.MissingAuthPlugin, ksa.auth_plugins.MissingRequiredOptions) as exc:
        raise UsageError(
            f"no cloud to publish to ({exc}): give --os-cloud or OS_* variables"
        ) from None
    except unreachable as exc:
        raise CloudError(f"Glance unreachable while {what}: {exc}") from None
    except (ksa.ClientException, sdk.SDKException) as exc:
        raise CloudError(f"{what}: {exc}") from None


def _reason(resp: Any) -> str:
    """Glance's own words from an error response (JSON or the HTML of webob's error pages)."""
    text = resp.reason or ""
    try:
        doc = resp.json()
    except ValueError:
        body = " ".join(resp.text.split())
        return f"{text}: {body[:200]}" if body else text
    message = doc.get("message") or doc.get("error", {}).get("message") or str(doc)[:200]
    return f"{text}: {message}"
