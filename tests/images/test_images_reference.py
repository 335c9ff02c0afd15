"""Pure logic: reference normalisation, credentials lookup, challenges, platform selection."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from pytest_modal_sandbox.errors import SandboxStartError
from pytest_modal_sandbox.images import ImageReferenceError, PlatformNotFound, parse_reference
from pytest_modal_sandbox.images.auth import find_credentials, parse_challenge
from pytest_modal_sandbox.images.errors import RegistryAuthError
from pytest_modal_sandbox.images.manifest import Platform, select_platform

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "canonical", "endpoint"),
    [
        ("redis", "docker.io/library/redis:latest", "registry-1.docker.io"),
        ("redis:7-alpine", "docker.io/library/redis:7-alpine", "registry-1.docker.io"),
        ("bitnami/redis", "docker.io/bitnami/redis:latest", "registry-1.docker.io"),
        ("index.docker.io/library/redis:7", "docker.io/library/redis:7", "registry-1.docker.io"),
        ("docker.io/redis", "docker.io/library/redis:latest", "registry-1.docker.io"),
        ("ghcr.io/org/team/app:1.2", "ghcr.io/org/team/app:1.2", "ghcr.io"),
        ("localhost/app", "localhost/app:latest", "localhost"),
        ("localhost:5000/app:v1", "localhost:5000/app:v1", "localhost:5000"),
        ("127.0.0.1:5000/a/b@" + D, "127.0.0.1:5000/a/b@" + D, "127.0.0.1:5000"),
        ("redis:7@" + D, "docker.io/library/redis:7@" + D, "registry-1.docker.io"),
        ("my_org/app__x-y.z", "docker.io/my_org/app__x-y.z:latest", "registry-1.docker.io"),
    ],
)
def test_references_normalise_like_docker(text: str, canonical: str, endpoint: str) -> None:
    ref = parse_reference(text)
    assert str(ref) == canonical
    assert ref.endpoint == endpoint
    assert ref.lookup == (ref.digest or ref.tag)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("Redis", "lowercase"),
        ("redis:", "tag ''"),
        ("redis:-x", "tag '-x'"),
        ("redis@sha256:abc", "64 lowercase hex"),
        ("redis@md5:" + "a" * 32, "only sha256"),
        ("https://ghcr.io/x", "URL scheme"),
        ("a//b", "empty path component"),
        ("red is", "whitespace"),
        ("ghcr.io/a/-b", "component '-b'"),
        ("ghcr.io:/x", "registry 'ghcr.io:'"),
    ],
)
def test_bad_references_say_what_is_wrong(text: str, fragment: str) -> None:
    with pytest.raises(ImageReferenceError) as info:
        parse_reference(text)
    assert fragment in str(info.value)
    assert repr(text) in str(info.value)
    assert isinstance(info.value, SandboxStartError)


def test_non_string_reference() -> None:
    with pytest.raises(ImageReferenceError, match="expected a string"):
        parse_reference(42)  # type: ignore[arg-type]


def test_challenge_parsing() -> None:
    c = parse_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/redis:pull"'
    )
    assert c.scheme == "bearer"
    assert c.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/redis:pull",
    }
    assert parse_challenge('Basic realm="x"').scheme == "basic"


def _config(tmp: Path, data: object) -> None:
    (Path(os.environ["DOCKER_CONFIG"]) / "config.json").write_text(json.dumps(data))


def test_credentials_from_docker_config(tmp_path: Path) -> None:
    auth = base64.b64encode(b"bob:pa:ss").decode()
    _config(
        tmp_path,
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": auth},
                "http://localhost:5000/v2/": {"username": "u", "password": "p"},
                "ghcr.io": {},
            }
        },
    )
    hub = find_credentials("docker.io")
    assert hub is not None and (hub.username, hub.password) == ("bob", "pa:ss")
    local = find_credentials("localhost:5000")
    assert local is not None and (local.username, local.password) == ("u", "p")
    assert find_credentials("ghcr.io") is None
    assert find_credentials("quay.io") is None
    assert "pa:ss" not in repr(hub)


def test_env_credentials_win_and_are_validated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _config(tmp_path, {"auths": {"ghcr.io": {"username": "cfg", "password": "x"}}})
    monkeypatch.setenv(
        "PYTEST_MODAL_SANDBOX_REGISTRY_AUTH",
        json.dumps(
            {
                "ghcr.io": "env:secret",
                "quay.io": {"auth": base64.b64encode(b"q:w").decode()},
            }
        ),
    )
    creds = find_credentials("ghcr.io")
    assert creds is not None and creds.username == "env"
    quay = find_credentials("quay.io")
    assert quay is not None and quay.password == "w"
    monkeypatch.setenv("PYTEST_MODAL_SANDBOX_REGISTRY_AUTH", "{not json")
    with pytest.raises(RegistryAuthError, match="not valid JSON"):
        find_credentials("ghcr.io")
    monkeypatch.setenv("PYTEST_MODAL_SANDBOX_REGISTRY_AUTH", '{"ghcr.io": "nocolon"}')
    with pytest.raises(RegistryAuthError, match="user:password"):
        find_credentials("ghcr.io")


def test_bad_docker_config_auth_is_a_clear_error(tmp_path: Path) -> None:
    _config(tmp_path, {"auths": {"ghcr.io": {"auth": "%%%"}}})
    with pytest.raises(RegistryAuthError, match=r"auths\['ghcr.io'\].*base64"):
        find_credentials("ghcr.io")


def test_credential_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-testhelper"
    helper.write_text(
        '#!/bin/sh\nread server\nif [ "$server" = ghcr.io ]; then\n'
        '  printf \'{"ServerURL":"ghcr.io","Username":"helped","Secret":"tok"}\'\n'
        "else\n  echo 'credentials not found' >&2; exit 1\nfi\n"
    )
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    _config(tmp_path, {"credsStore": "testhelper"})
    creds = find_credentials("ghcr.io")
    assert creds is not None and (creds.username, creds.password) == ("helped", "tok")
    assert find_credentials("quay.io") is None


INDEX = json.dumps(
    {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + "1" * 64,
                "size": 1,
                "platform": {"os": "linux", "architecture": "amd64"},
            },
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + "2" * 64,
                "size": 1,
                "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
            },
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + "3" * 64,
                "size": 1,
                "platform": {"os": "linux", "architecture": "arm", "variant": "v7"},
            },
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + "4" * 64,
                "size": 1,
                "platform": {"os": "unknown", "architecture": "unknown"},
            },
        ],
    }
).encode()


def test_platform_selection() -> None:
    assert select_platform(INDEX, "x", Platform.parse("linux/amd64")).digest.endswith("1" * 64)
    assert select_platform(INDEX, "x", Platform.parse("linux/arm64")).digest.endswith("2" * 64)
    assert select_platform(INDEX, "x", Platform.parse("linux/arm/v7")).digest.endswith("3" * 64)
    with pytest.raises(PlatformNotFound) as info:
        select_platform(INDEX, "image foo", Platform.parse("linux/s390x"))
    message = str(info.value)
    assert "linux/s390x" in message and "linux/amd64, linux/arm64/v8, linux/arm/v7" in message
    assert "unknown" not in message
