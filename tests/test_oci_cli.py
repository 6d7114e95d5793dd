"""`nodecompat attach` as a user runs it: a subprocess against a real registry."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import support_registry as sr

from nodecompat.clients.registry_args import add_registry_args, read_secret, registry_auth_from_args
from nodecompat.oci.discovery import fetch_compat_spec
from nodecompat.oci.errors import RegistryError

registry = sr.registry
auth_registry = sr.auth_registry
repo_name = sr.repo_name


def nodecompat(args: list[str], tmp_path: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nodecompat.clients.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=sr.env_without_docker(tmp_path),
    )


def test_read_secret_trims_like_nfd() -> None:
    assert read_secret(io.StringIO("pw\r\n")) == "pw"
    assert read_secret(io.StringIO("pw\n\n")) == "pw\n"
    assert read_secret(io.StringIO("pw\n\r")) == "pw\n"  # \n is only trimmed when last
    assert read_secret(io.StringIO(" pw ")) == " pw "


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_registry_args(parser)
    return parser.parse_args(argv)


def test_registry_flag_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    auth = registry_auth_from_args(
        _args(["--registry-username", "u", "--registry-password-stdin"]), io.StringIO("secret\n")
    )
    assert (auth.username, auth.password) == ("u", "secret")
    assert registry_auth_from_args(_args(["--registry-token-stdin"]), io.StringIO("tok\n")).token == "tok"
    for argv, stdin, why in [
        (["--registry-password-stdin"], "pw", "needs --registry-username"),
        (["--registry-username", "u"], "", "needs --registry-password-stdin"),
        (["--registry-username", "u", "--registry-password-stdin"], "\n", "no password"),
        (["--registry-token-stdin", "--registry-username", "u"], "t", "cannot be combined"),
    ]:
        with pytest.raises(RegistryError, match=why):
            registry_auth_from_args(_args(argv), io.StringIO(stdin))
    with pytest.raises(SystemExit):
        _args(["--registry-password-stdin", "--registry-token-stdin"])


@pytest.mark.registry
@sr.needs_registry
def test_attach_then_list(registry: sr.RegistryProcess, repo_name: str, tmp_path: Path) -> None:
    img = sr.push_image(registry.host, repo_name, tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(sr.spec_yaml(note="cli"))
    done = nodecompat(
        [
            "attach",
            "--image",
            img.reference,
            "--spec",
            str(spec),
            "--plain-http",
            "--created",
            "2025-07-01T00:00:00Z",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert img.digest in done.stdout and "referrers tag index" in done.stdout
    got = fetch_compat_spec(img.reference, plain_http=True)
    assert got.text == spec.read_text() and got.artifact_digest in done.stdout
    listed = nodecompat(["attach", "--list", "--json", "--image", img.reference, "--plain-http"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    [entry] = json.loads(listed.stdout)
    assert entry["digest"] == got.artifact_digest and entry["created"] == "2025-07-01T00:00:00Z"
    table = nodecompat(["attach", "--list", "--image", img.reference, "--plain-http"], tmp_path)
    assert table.returncode == 0 and got.artifact_digest in table.stdout


@pytest.mark.registry
@sr.needs_registry
def test_broken_spec_is_refused_before_any_push(
    registry: sr.RegistryProcess, repo_name: str, tmp_path: Path
) -> None:
    img = sr.push_image(registry.host, repo_name, tmp_path)
    spec = tmp_path / "broken.yaml"
    spec.write_text(sr.spec_yaml().replace("Gt", "Bogus"))
    done = nodecompat(["attach", "--image", img.reference, "--spec", str(spec), "--plain-http"], tmp_path)
    assert done.returncode == 2
    assert "Bogus" in done.stderr and "refusing to attach" in done.stderr
    assert done.stdout == ""
    listed = nodecompat(["attach", "--list", "--json", "--image", img.reference, "--plain-http"], tmp_path)
    assert json.loads(listed.stdout) == []


@pytest.mark.registry
@sr.needs_registry
def test_password_stdin_against_htpasswd_registry(
    auth_registry: sr.RegistryProcess, repo_name: str, tmp_path: Path
) -> None:
    img = sr.push_image(auth_registry.host, repo_name, tmp_path, creds=f"{sr.USER}:{sr.PASSWORD}")
    spec = tmp_path / "spec.yaml"
    spec.write_text(sr.spec_yaml(note="stdin"))
    assert auth_registry.tls is not None  # credentials only ever go over HTTPS
    base = ["attach", "--image", img.reference, "--spec", str(spec), "--ca-file", str(auth_registry.tls[0])]
    done = nodecompat(
        [*base, "--registry-username", sr.USER, "--registry-password-stdin"],
        tmp_path,
        stdin=sr.PASSWORD + "\r\n",
    )
    assert done.returncode == 0, done.stderr
    anon = nodecompat(base, tmp_path)
    assert anon.returncode == 2 and "UNAUTHENTICATED" in anon.stderr
    both = nodecompat([*base, "--registry-password-stdin", "--registry-token-stdin"], tmp_path, stdin="x")
    assert both.returncode == 2 and "not allowed with" in both.stderr


@pytest.mark.registry
@sr.needs_registry
def test_errors_exit_2_with_a_message(registry: sr.RegistryProcess, repo_name: str, tmp_path: Path) -> None:
    missing = nodecompat(
        ["attach", "--list", "--image", f"{registry.host}/{repo_name}:nope", "--plain-http"], tmp_path
    )
    assert missing.returncode == 2 and "NOT_FOUND" in missing.stderr and repo_name in missing.stderr
    bad_ref = nodecompat(["attach", "--list", "--image", "ubuntu:22.04"], tmp_path)
    assert bad_ref.returncode == 2 and "registry host" in bad_ref.stderr
    no_file = nodecompat(
        ["attach", "--image", f"{registry.host}/x:y", "--spec", str(tmp_path / "nope.yaml")], tmp_path
    )
    assert no_file.returncode == 2 and "cannot read spec" in no_file.stderr
