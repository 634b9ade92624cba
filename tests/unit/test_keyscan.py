"""The one private-key detector (assembler/keyscan.py), the build's strip and the boot check's
scan over real files. Keys are made here with openssl and ssh-keygen: a key committed to the
repository would itself be a private key lying about."""

from __future__ import annotations

import ast
import base64
import json
import os
import py_compile
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest

from assembler import keyscan
from assembler.agent.payload import strip_private_keys
from assembler.boottest import guest_facts
from assembler.boottest.instance import FACTS_DIR, Instance
from assembler.errors import BuildError
from assembler.steps.hygiene import strip_doc_keys

REPO = Path(__file__).parents[2]
SITE = PurePosixPath("opt/guest-agent-venv/lib/python3.11/site-packages")


def _run(*argv: str | Path) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One real key of each PEM kind, by name."""
    d = tmp_path_factory.mktemp("keys")
    commands = [
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024", "-out", d / "pkcs8"],
        ["openssl", "pkey", "-in", d / "pkcs8", "-traditional", "-out", d / "rsa"],
        ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", d / "ec"],
        ["openssl", "dsaparam", "-noout", "-genkey", "-out", d / "dsa-pkcs8", "1024"],
        ["openssl", "pkey", "-in", d / "dsa-pkcs8", "-traditional", "-out", d / "dsa"],
        ["openssl", "pkcs8", "-topk8", "-in", d / "pkcs8", "-passout", "pass:x", "-out", d / "encrypted"],
        # The legacy encrypted form: Proc-Type and DEK-Info headers before the body.
        ["openssl", "rsa", "-in", d / "rsa", "-traditional", "-aes128", "-passout", "pass:x", "-out", d / "legacy"],
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "t@h", "-f", d / "openssh"],
        ["openssl", "pkey", "-in", d / "pkcs8", "-pubout", "-out", d / "public.pem"],
        ["openssl", "req", "-x509", "-key", d / "pkcs8", "-subj", "/CN=t", "-days", "1", "-out", d / "cert.pem"],
    ]  # fmt: skip
    for argv in commands:
        _run(*argv)
    return {p.name: p.read_text() for p in d.iterdir()}


def ppk() -> str:
    """A PuTTY key file's shape (no puttygen here): random base64 where the key lines go."""
    blob = base64.b64encode(os.urandom(48)).decode()
    return (
        "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nComment: t@h\nPublic-Lines: 2\n"
        f"{blob[:64]}\n{blob[64:]}\nPrivate-Lines: 1\n{blob[:48]}\nPrivate-MAC: {'ab' * 32}\n"
    )


def _lines(pem: str) -> list[str]:
    return pem.strip("\n").split("\n")


# A key in each form a file may hold it: name -> (file name, content from the PEM text).
FORMS: dict[str, tuple[str, Callable[[str], str]]] = {
    "bare": ("id_key", lambda k: k),
    "crlf": ("key.pem", lambda k: k.replace("\n", "\r\n")),
    "not-at-line-start": ("key.txt", lambda k: "key material follows: " + k),
    "python-triple-quoted": ("test_tls.py", lambda k: 'class T:\n    KEY = """\\\n' + textwrap.indent(k, "        ") + '"""\n'),
    "python-implicit-concat": ("test_jwt.py", lambda k: "KEY = (\n" + "".join(f"    '{line}\\n'\n" for line in _lines(k)) + ")\n"),
    "python-bytes-concat": ("test_b.py", lambda k: "KEY = (\n" + "".join(f'    b"{line}\\n"\n' for line in _lines(k)) + ")\n"),
    "python-escaped-one-line": ("test_one.py", lambda k: 'KEY = "' + k.replace("\n", "\\n") + '"\n'),
    "json": ("fixture.json", lambda k: json.dumps({"private_key": k}, indent=1)),
    "json-double-escaped": ("fixture2.json", lambda k: json.dumps({"k": k.replace("\n", "\\n")})),
    "yaml-block": ("config.yaml", lambda k: "tls:\n  key: |\n" + textwrap.indent(k, "    ")),
    "go-plus": ("key_test.go", lambda k: "const key = " + " +\n".join(f'\t"{line}\\n"' for line in _lines(k)) + "\n"),
    "js-plus": ("key.spec.js", lambda k: "const key = " + " +\n".join(f"  '{line}\\n'" for line in _lines(k)) + ";\n"),
    "c-adjacent": ("key.c", lambda k: "static const char key[] =\n" + "".join(f'    "{line}\\n"\n' for line in _lines(k)) + ";\n"),
    "rust-continued": ("key.rs", lambda k: 'const KEY: &str = "' + "\\n\\\n".join(_lines(k)) + '";\n'),
    "js-array": ("key.ts", lambda k: "export const lines = [\n" + ",\n".join(f'  "{line}"' for line in _lines(k)) + "\n].join('\\n');\n"),
    "hash-comment": ("notes.sh", lambda k: textwrap.indent(k, "# ")),
    "slash-comment": ("notes.go", lambda k: textwrap.indent(k, "// ")),
    "star-comment": ("notes.java", lambda k: "/*\n" + textwrap.indent(k, " * ") + " */\n"),
    "xml-entities": ("key.xml", lambda k: "<key>" + k.replace("\n", "&#10;") + "</key>\n"),
}  # fmt: skip
KINDS = {
    "pkcs8": "PRIVATE KEY",
    "rsa": "RSA PRIVATE KEY",
    "ec": "EC PRIVATE KEY",
    "dsa": "DSA PRIVATE KEY",
    "encrypted": "ENCRYPTED PRIVATE KEY",
    "legacy": "RSA PRIVATE KEY",
    "openssh": "OPENSSH PRIVATE KEY",
}


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_key_is_found_in_every_form(
    keys: dict[str, str], kind: str, form: str, tmp_path: Path
) -> None:
    name, render = FORMS[form]
    path = tmp_path / name
    path.write_text(render(keys[kind]), newline="")
    finding = keyscan.scan_file(str(path))
    assert finding is not None and finding.kind == KINDS[kind]


def test_a_key_in_bytecode_is_found(keys: dict[str, str], tmp_path: Path) -> None:
    """A test module's constant survives into its .pyc, joined, between marshal bytes."""
    source = tmp_path / "test_mod.py"
    source.write_text(FORMS["python-implicit-concat"][1](keys["pkcs8"]))
    compiled = py_compile.compile(str(source), cfile=str(tmp_path / "test_mod.pyc"), doraise=True)
    assert keyscan.scan_file(compiled) is not None


def test_a_putty_key_is_found(tmp_path: Path) -> None:
    (tmp_path / "k.ppk").write_text(ppk())
    (tmp_path / "k.py").write_text(FORMS["python-implicit-concat"][1](ppk()))
    for name in ("k.ppk", "k.py"):
        finding = keyscan.scan_file(str(tmp_path / name))
        assert finding is not None and finding.kind == "PuTTY-User-Key-File-3"


@pytest.mark.parametrize(
    "size,at",
    [
        (100 * 1024, 50 * 1024),  # past the old 64 KiB cap
        (12 * 2**20, 6 * 2**20),  # more than one read window
        (12 * 2**20, keyscan.CHUNK - 300),  # across a window's edge
        (12 * 2**20, keyscan.CHUNK + 100),  # just inside the second window's own part
        (12 * 2**20, 12 * 2**20 - 2000),  # in the last window's overlap
    ],
)
def test_a_key_in_a_large_file_is_found(
    keys: dict[str, str], size: int, at: int, tmp_path: Path
) -> None:
    key = FORMS["python-implicit-concat"][1](keys["rsa"]).encode()
    filler = b"x = compute(1, 2)  # code, not key material\n"
    body = (filler * (size // len(filler) + 1))[:size]
    path = tmp_path / "big.py"
    path.write_bytes(body[:at] + key + body[at:])
    finding = keyscan.scan_file(str(path))
    assert finding is not None and finding.offset == at + key.index(b"-----BEGIN")


PEM_PARSER = """
import base64

BEGIN = "-----BEGIN PRIVATE KEY-----"
END = "-----END PRIVATE KEY-----"
PATTERN = rb"-----BEGIN (RSA |EC )?PRIVATE KEY-----\\s*([A-Za-z0-9+/=\\s]+)-----END \\1PRIVATE KEY-----"


def read_key(text: str) -> bytes:
    start = text.index(BEGIN) + len(BEGIN)
    stop = text.index(END, start)
    return base64.b64decode("".join(text[start:stop].split()))


def test_keypair_create(output: str) -> None:
    assert "-----BEGIN OPENSSH PRIVATE KEY-----" in output
    assert "-----END OPENSSH PRIVATE KEY-----" in output
"""
DOC_EXAMPLE = """\
The key file looks like this (shortened)::

    -----BEGIN RSA PRIVATE KEY-----
    MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM2Alf9ZLV6x8bTTdxAzhvB3Gb
    ...
    -----END RSA PRIVATE KEY-----

Each -----BEGIN PRIVATE KEY----- line is followed by the base64 encoding of the key in its DER
form and nothing else at all whatever other tools say, up to the -----END PRIVATE KEY----- line
"""
YAML_EXAMPLE = "ssh_keys:\n  rsa_private: |\n    -----BEGIN RSA PRIVATE KEY-----\n    MIIB\n    -----END RSA PRIVATE KEY-----\n"


def _negatives(keys: dict[str, str]) -> dict[str, bytes]:
    blob = base64.encodebytes(os.urandom(600)).decode()
    return {
        "parser.py": PEM_PARSER.encode(),
        "README.rst": DOC_EXAMPLE.encode(),
        "cloud.yaml": YAML_EXAMPLE.encode(),
        "public.pem": keys["public.pem"].encode(),
        "cert.pem": keys["cert.pem"].encode(),
        "id_ed25519.pub": keys["openssh.pub"].encode(),
        # The markers with binary between them, as in cryptography's bytecode and libraries.
        "ssh.cpython-311.pyc": b"\xa7\r\r\n\0\x01-----BEGIN PRIVATE KEY-----\0\x03\x88\x13-----END PRIVATE KEY-----\0",
        # Base64 that no END marker closes within reach: a truncated paste, not a key.
        "truncated.pem": f"-----BEGIN PRIVATE KEY-----\n{blob}".encode(),
        "far.txt": f"-----BEGIN PRIVATE KEY-----\n{blob}{'#' * keyscan.MAX_SPAN}\n-----END PRIVATE KEY-----\n".encode(),
        # A key whose markers disagree is not one block.
        "mismatched.pem": keys["rsa"].replace("END RSA", "END EC").encode(),
    }  # fmt: skip


def test_code_and_docs_that_name_the_markers_are_not_keys(
    keys: dict[str, str], tmp_path: Path
) -> None:
    for name, content in _negatives(keys).items():
        (tmp_path / name).write_bytes(content)
        assert keyscan.scan_file(str(tmp_path / name)) is None, name
    own = [
        REPO / "assembler" / "keyscan.py",
        REPO / "assembler" / "boottest" / "guest_facts.py",
        REPO / "assembler" / "agent" / "payload.py",
        Path(__file__),
    ]
    for path in own:
        assert keyscan.scan_file(str(path)) is None, path
        compiled = py_compile.compile(str(path), cfile=str(tmp_path / "own.pyc"), doraise=True)
        assert keyscan.scan_file(compiled) is None, compiled


def test_keys_compiled_into_native_code_are_not_reported(
    keys: dict[str, str], tmp_path: Path
) -> None:
    """GnuTLS's self-test keys, in every Debian image: ELF objects are not scanned."""
    library = tmp_path / "libgnutls.so.30"
    library.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 4000 + keys["rsa"].encode() + b"\0" * 64)
    assert keyscan.scan_file(str(library)) is None
    (tmp_path / "not-elf.bin").write_bytes(library.read_bytes()[1:])
    assert keyscan.scan_file(str(tmp_path / "not-elf.bin")) is not None


def test_only_regular_files_are_read(keys: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "key").write_text(keys["rsa"])
    (tmp_path / "link").symlink_to("key")
    os.mkfifo(tmp_path / "fifo")  # opening it would block
    assert keyscan.scan_file(str(tmp_path / "link")) is None
    assert keyscan.scan_file(str(tmp_path / "fifo")) is None
    assert keyscan.scan_file(str(tmp_path / "missing")) is None


def _plant(keys: dict[str, str], staging: Path) -> set[str]:
    """A venv-shaped tree: keys in tests and data files, negatives in importable code.
    Returns the guest paths that hold keys."""
    site = staging / SITE
    planted = set()
    for i, (name, render) in enumerate(v for _, v in sorted(FORMS.items())):
        kind = sorted(KINDS)[i % len(KINDS)]
        path = site / f"pkg{i}" / "tests" / "unit" / name
        path.parent.mkdir(parents=True)
        path.write_text(render(keys[kind]))
        planted.add(f"/{SITE}/pkg{i}/tests/unit/{name}")
    data = site / "demo" / "certs" / "server.key"
    data.parent.mkdir(parents=True)
    data.write_text(keys["ec"])
    planted.add(f"/{SITE}/demo/certs/server.key")
    big = site / "bigpkg" / "test_data.py"
    big.parent.mkdir(parents=True)
    big.write_bytes(b"# filler\n" * (2 * 2**20) + FORMS["json"][1](keys["openssh"]).encode())
    planted.add(f"/{SITE}/bigpkg/test_data.py")
    for name, content in _negatives(keys).items():
        (site / "crypto" / name).parent.mkdir(parents=True, exist_ok=True)
        (site / "crypto" / name).write_bytes(content)
    return planted


def test_build_and_boot_check_find_the_same_keys(keys: dict[str, str], tmp_path: Path) -> None:
    planted = _plant(keys, tmp_path)
    guest = {k["path"] for k in guest_facts.private_keys(str(tmp_path))}
    walked = {k["path"] for k in guest_facts.private_keys_walk(str(tmp_path))}
    removed = strip_private_keys(tmp_path)
    assert guest == walked == set(removed) == planted
    assert removed == sorted(removed)  # the manifest's list, in a stable order
    assert guest_facts.private_keys(str(tmp_path)) == []
    assert all((tmp_path / SITE / "crypto" / name).exists() for name in _negatives(keys))


def test_a_key_in_importable_code_stops_the_build(keys: dict[str, str], tmp_path: Path) -> None:
    """Removing a module could break an import, blanking its key whatever uses it: a
    dependency that ships a key in its code is the operator's call, not the build's."""
    module = tmp_path / SITE / "vendor" / "defaults.py"
    module.parent.mkdir(parents=True)
    module.write_text(FORMS["python-implicit-concat"][1](keys["rsa"]))
    fixture = tmp_path / SITE / "vendor" / "tests" / "key.pem"
    fixture.parent.mkdir()
    fixture.write_text(keys["rsa"])
    with pytest.raises(
        BuildError, match=r"importable code.*/vendor/defaults\.py \(RSA PRIVATE KEY\)"
    ):
        strip_private_keys(tmp_path)
    assert module.exists() and fixture.exists()  # nothing half-done


def test_the_detector_runs_in_the_guest_as_shipped(keys: dict[str, str], tmp_path: Path) -> None:
    """The user data's files unpacked as cloud-init writes them; the gatherer imports the
    shipped detector with the system's Python alone (no assembler package installed)."""
    import yaml  # type: ignore[import-untyped]

    guest = tmp_path / "guest"
    for entry in yaml.safe_load(Instance("ubuntu", "ssh-ed25519 AAAA t", ()).user_data())[
        "write_files"
    ]:
        path = guest / entry["path"].lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(entry["content"]))
    facts_dir = guest / FACTS_DIR.lstrip("/")
    assert (facts_dir / "assembler" / "keyscan.py").read_bytes() == (
        REPO / "assembler" / "keyscan.py"
    ).read_bytes()
    tree = tmp_path / "tree"
    planted = _plant(keys, tree)
    python = shutil.which("python3", path="/usr/bin") or sys.executable
    probe = (
        f"import sys, json; sys.path.insert(0, {str(facts_dir)!r}); import guest_facts; "
        "print(json.dumps([guest_facts.keyscan.__file__, guest_facts.private_keys(sys.argv[1])]))"
    )
    out = subprocess.run(
        [python, "-I", "-c", probe, tree], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    module, found = json.loads(out.stdout)
    assert module == str(facts_dir / "assembler" / "keyscan.py")
    assert {k["path"] for k in found} == planted


@pytest.mark.parametrize("module", ["assembler/keyscan.py", "assembler/boottest/guest_facts.py"])
def test_guest_side_code_is_python_39_and_stdlib_only(module: str) -> None:
    tree = ast.parse((REPO / module).read_text(), feature_version=(3, 9))
    imported = {
        name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        )
    }
    assert imported - sys.stdlib_module_names <= {"assembler"}


class LocalGuest:
    """The guestfs calls strip_doc_keys makes, on this host's files. Like guestfs, sh returns
    a C string: whatever follows a NUL is lost (a NUL-separated list once lost all but one)."""

    def sh(self, script: str) -> str:
        out = subprocess.run(["sh", "-c", script], capture_output=True, check=True).stdout
        return out.split(b"\0", 1)[0].decode()

    def is_file(self, path: str) -> bool:
        return os.path.isfile(path)

    def download(self, path: str, local: str) -> None:
        shutil.copyfile(path, local)

    def rm(self, path: str) -> None:
        os.unlink(path)


def test_docs_with_example_keys_are_removed(keys: dict[str, str], tmp_path: Path) -> None:
    """cloud-init's examples hold real keys (bookworm's base has two); its placeholders do not."""
    examples = tmp_path / "doc" / "cloud-init" / "examples"
    examples.mkdir(parents=True)
    (examples / "cloud-config-ssh-keys.txt").write_text(FORMS["yaml-block"][1](keys["rsa"]))
    (examples / "cloud-config-ansible-managed.txt").write_text(
        FORMS["hash-comment"][1](keys["openssh"])
    )
    chef = "validation_key: |\n    -----BEGIN RSA PRIVATE KEY-----\n    YOUR-ORGS-VALIDATION-KEY-HERE\n    -----END RSA PRIVATE KEY-----\n"
    (examples / "cloud-config-chef.txt").write_text(chef)
    (tmp_path / "doc" / "README").write_text("nothing here\n")
    removed = strip_doc_keys(LocalGuest(), str(tmp_path / "doc"))
    assert sorted(Path(p).name for p in removed) == [
        "cloud-config-ansible-managed.txt",
        "cloud-config-ssh-keys.txt",
    ]
    assert (examples / "cloud-config-chef.txt").exists() and (tmp_path / "doc" / "README").exists()
    assert strip_doc_keys(LocalGuest(), str(tmp_path / "missing")) == []
