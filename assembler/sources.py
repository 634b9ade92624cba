"""Where each official cloud image is published and how its publisher vouches for it, as data.

One row per (guest OS, release, arch). Adding a release is adding a row; download.py and
fetch.py never branch on distro names.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from assembler.distros import GuestOS, Release
from assembler.errors import UsageError
from assembler.resources import resource

DEFAULT_ARCH = "amd64"


class HashAlgo(StrEnum):
    SHA256 = "sha256"
    SHA512 = "sha512"

    @property
    def hex_length(self) -> int:
        return {HashAlgo.SHA256: 64, HashAlgo.SHA512: 128}[self]


@dataclass(frozen=True)
class Source:
    """One published cloud image and the files that vouch for it.

    URLs are `<site>/<directory>/<file>`; `--base-url` replaces `site` only, so a mirror laid out
    like the publisher's site works unchanged.
    """

    guest_os: GuestOS
    release: str  # codename, as in distros.RELEASES
    arch: str
    site: str
    directory: str  # below the site; {release} is filled in
    image: str  # file name in the directory; {release}, {version}, {arch} are filled in
    version: str  # the release's version, for file names such as debian-12-...
    sums: str  # the checksum list in the same directory
    algo: HashAlgo
    # The detached OpenPGP signature of `sums`, or None where the publisher signs nothing.
    signature: str | None
    # Fingerprints (40 hex digits, upper case) the signature must come from; the key file is
    # only a way to hand gpgv the key, these pins are what is trusted.
    fingerprints: tuple[str, ...]
    key_file: Path | None
    publisher: str  # for messages: "Ubuntu's cloud image signing key"

    def _fill(self, text: str) -> str:
        return text.format(release=self.release, version=self.version, arch=self.arch)

    @property
    def image_name(self) -> str:
        return self._fill(self.image)

    def directory_url(self, base_url: str | None = None) -> str:
        site = (base_url or self.site).rstrip("/")
        return f"{site}/{self._fill(self.directory).strip('/')}"

    def image_url(self, base_url: str | None = None) -> str:
        return f"{self.directory_url(base_url)}/{self.image_name}"

    def sums_url(self, base_url: str | None = None) -> str:
        return f"{self.directory_url(base_url)}/{self.sums}"

    def signature_url(self, base_url: str | None = None, name: str | None = None) -> str | None:
        """The signature's URL; `name` stands in where the publisher signs nothing but a mirror
        re-signs (then fetch.py asks for `<sums>.gpg`)."""
        sig = name or self.signature
        return f"{self.directory_url(base_url)}/{sig}" if sig else None


def _key(name: str) -> Path:
    """A publisher key shipped in keys/ (assembler/_data/keys in a wheel)."""
    try:
        return resource(f"keys/{name}")
    except FileNotFoundError:
        # Missing from this installation: fetch.py says so and asks for --signing-key.
        return Path(__file__).resolve().parent.parent / "keys" / name


# The UEC Image Automatic Signing Key <cdimage@ubuntu.com>: signs SHA256SUMS on
# cloud-images.ubuntu.com (Ubuntu's "verify image checksum" documentation names it).
UBUNTU_CLOUD_FPR = "D2EB44626FDDC30B513D5BB71A5D6C4C7DB87C81"


def _ubuntu(release: str, version: str) -> Source:
    return Source(
        guest_os=GuestOS.UBUNTU,
        release=release,
        arch=DEFAULT_ARCH,
        site="https://cloud-images.ubuntu.com",
        directory="{release}/current",
        # A qcow2 despite the .img name.
        image="{release}-server-cloudimg-{arch}.img",
        version=version,
        sums="SHA256SUMS",
        algo=HashAlgo.SHA256,
        signature="SHA256SUMS.gpg",
        fingerprints=(UBUNTU_CLOUD_FPR,),
        key_file=_key("ubuntu-cloud-images.asc"),
        publisher="Ubuntu's cloud image signing key",
    )


def _debian(release: str, version: str) -> Source:
    # cloud.debian.org publishes SHA512SUMS beside the images and no signature of it: these
    # images are checked against the list only, and the manifest records them as unsigned.
    return Source(
        guest_os=GuestOS.DEBIAN,
        release=release,
        arch=DEFAULT_ARCH,
        site="https://cloud.debian.org/images/cloud",
        directory="{release}/latest",
        # genericcloud: the cloud-init image with a kernel trimmed to virtual hardware.
        image="debian-{version}-genericcloud-{arch}.qcow2",
        version=version,
        sums="SHA512SUMS",
        algo=HashAlgo.SHA512,
        signature=None,
        fingerprints=(),
        key_file=None,
        publisher="Debian's cloud team",
    )


SOURCES: dict[tuple[GuestOS, str, str], Source] = {
    (s.guest_os, s.release, s.arch): s
    for s in (
        _ubuntu("jammy", "22.04"),
        _ubuntu("noble", "24.04"),
        _debian("bookworm", "12"),
        _debian("trixie", "13"),
    )
}


def source_for(release: Release, arch: str = DEFAULT_ARCH) -> Source:
    """The published image of a release, or UsageError naming the way out (`--base`)."""
    src = SOURCES.get((release.distro.name, release.codename, arch))
    if src is None:
        raise UsageError(
            f"no published cloud image is known for {release.distro.name} {release.codename} "
            f"{arch}; pass --base PATH"
        )
    return src


def parse_sums(text: str, algo: HashAlgo) -> dict[str, str]:
    """A checksum list (`<hex> *name`, `<hex>  name`, or BSD `SHA256 (name) = <hex>`) as
    {file name: lower-case hex}. Lines of another shape or another length are skipped (Ubuntu's
    lists mix in other files); a name listed twice with two digests is an error, since either
    could be the one the publisher meant."""
    found: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        digest, name = _split_sums_line(line, algo)
        if digest is None or name is None:
            continue
        name = name.removeprefix("./")
        if found.get(name, digest) != digest:
            raise ValueError(f"{name} is listed twice with different checksums")
        found[name] = digest
    return found


def _split_sums_line(line: str, algo: HashAlgo) -> tuple[str | None, str | None]:
    bsd_prefix = f"{algo.upper()} ("
    if line.startswith(bsd_prefix) and ") = " in line:
        name, _, digest = line[len(bsd_prefix) :].rpartition(") = ")
    else:
        digest, _, name = line.partition(" ")
        # GNU coreutils: one space then '*' (binary) or ' ' (text) before the name.
        name = name[1:] if name[:1] in ("*", " ") else name
    digest = digest.strip().lower()
    if len(digest) != algo.hex_length or any(c not in "0123456789abcdef" for c in digest):
        return None, None
    return digest, name or None
