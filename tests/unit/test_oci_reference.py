"""Image references parsed with docker's rules."""

from __future__ import annotations

import pytest

from assembler.errors import UsageError
from assembler.oci.reference import Reference

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("postgres:15", "docker.io", "library/postgres", "15", None),
        ("postgres", "docker.io", "library/postgres", "latest", None),
        ("bitnami/postgresql", "docker.io", "bitnami/postgresql", "latest", None),
        (
            "169.254.0.102:5000/trove-test-double/postgresql:15",
            "169.254.0.102:5000",
            "trove-test-double/postgresql",
            "15",
            None,
        ),
        (f"registry.example.com/a/b@{D}", "registry.example.com", "a/b", None, D),
        (f"registry.example.com/a/b:1.2@{D}", "registry.example.com", "a/b", "1.2", D),
        ("localhost:5000/x:1", "localhost:5000", "x", "1", None),
        ("localhost/x", "localhost", "x", "latest", None),
        ("index.docker.io/library/mariadb:11.4", "docker.io", "library/mariadb", "11.4", None),
        ("[::1]:5000/a__b/c-d.e:v_1", "[::1]:5000", "a__b/c-d.e", "v_1", None),
    ],
)
def test_parse(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    assert Reference.parse(str(ref)) == ref


def test_forms() -> None:
    ref = Reference.parse("postgres:15")
    assert str(ref) == "docker.io/library/postgres:15"
    assert ref.familiar == "postgres:15"
    assert ref.reference == "15"
    assert Reference.parse(f"a.b/c@{D}").reference == D
    assert Reference.parse("a.b/c:1").with_tag("2").tag == "2"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        (" postgres", "spaces"),
        ("Postgres:15", "lowercase"),
        ("a.b/UPPER/x", "lowercase"),
        ("postgres:-bad", "not a valid tag"),
        ("postgres:" + "t" * 129, "not a valid tag"),
        ("postgres@sha256:abc", "not a digest"),
        ("postgres@md5:" + "a" * 32, "not supported"),
        ("postgres@sha256:" + "A" * 64, "lowercase hex"),
        ("a..b/c", "not a registry host"),
        ("a.b/c..d", "not a valid repository component"),
        ("a.b/c//d", "not a valid repository component"),
        ("-a.b/c", "not a registry host"),
        ("a.b/" + "x" * 260, "longer than 255"),
    ],
)
def test_malformed(text: str, why: str) -> None:
    with pytest.raises(UsageError, match=f"malformed image reference .*{why}"):
        Reference.parse(text)
