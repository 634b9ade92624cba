"""A castellan key manager that reads certificates from a directory, for the test Glance.

In production Glance's signature check (cursive) fetches the signing certificate from Barbican
through castellan; Barbican (with Keystone behind it) cannot run here. castellan loads
`[key_manager] backend` as a class path when it names no stevedore driver, so the test Glance
names this class, and cursive then verifies uploads for real against what it returns.

`get(context, uuid)` answers with the certificate in `<certificate_dir>/<uuid>.pem` (directory
from `[file_key_manager] certificate_dir`). Only reading is done: nothing Glance calls on an
image upload stores or deletes a secret.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, NoReturn

from castellan.common import exception
from castellan.common.objects import managed_object, x_509
from castellan.key_manager import key_manager
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from oslo_config import cfg

GROUP = "file_key_manager"
OPTS = [cfg.StrOpt("certificate_dir", help="Where <uuid>.pem certificates are read from.")]


class FileKeyManager(key_manager.KeyManager):
    def __init__(self, configuration: cfg.ConfigOpts | None) -> None:
        conf = configuration or cfg.CONF
        conf.register_opts(OPTS, group=GROUP)  # idempotent for the same options
        directory = conf[GROUP].certificate_dir
        if not directory:
            raise exception.KeyManagerError(reason=f"[{GROUP}] certificate_dir is not set")
        self.directory = Path(directory)

    def get(
        self,
        context: key_manager.Context | None,
        managed_object_id: str,
        metadata_only: bool = False,
    ) -> managed_object.ManagedObject:
        try:  # only a UUID names a file: the id comes from an image property
            name = str(uuid.UUID(managed_object_id))
        except ValueError:
            raise exception.ManagedObjectNotFoundError(uuid=managed_object_id) from None
        path = self.directory / f"{name}.pem"
        try:
            pem = path.read_bytes()
        except FileNotFoundError:
            raise exception.ManagedObjectNotFoundError(uuid=managed_object_id) from None
        # castellan's X509 holds DER: cursive loads get_encoded() with load_der_x509_certificate.
        der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
        return x_509.X509(der, name=name, id=name)

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError("FileKeyManager only reads certificates (get)")

    # castellan's other abstract methods: nothing in an upload calls them.
    create_key = create_key_pair = store = delete = _read_only
    add_consumer = remove_consumer = _read_only
