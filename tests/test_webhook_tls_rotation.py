"""Serving-certificate rotation of `nodecompat webhook` (server/webhook/webhook_tls.py) without a restart: the
cert/key are mounted the way the kubelet mounts a Secret (files behind a `..data` symlink that is swapped
atomically when cert-manager renews the Secret). A real TLS client (the stdlib's ssl, verifying against the
test CA, with and without SNI) sees the renewed certificate on new connections; a broken renewed pair (key
of another certificate, a truncated certificate) is logged and the previous certificate keeps serving; a
good pair after it is served again. Real process, loopback, certificates made with openssl."""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from support_fleet import Certs, make_certs, make_node_cert
from support_webhook import WebhookProc

INTERVAL = 0.2  # --tls-reload-interval in this test


class Mount:
    """A Secret volume as the kubelet writes it: DIR/..data -> ..vN/, DIR/tls.crt -> ..data/tls.crt."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.version = 0
        directory.mkdir(parents=True)
        for name in ("tls.crt", "tls.key"):
            (directory / name).symlink_to(Path("..data") / name)

    def publish(self, cert: bytes, key: bytes) -> None:
        self.version += 1
        new = self.dir / f"..v{self.version}"
        new.mkdir()
        (new / "tls.crt").write_bytes(cert)
        (new / "tls.key").write_bytes(key)
        tmp = self.dir / "..data_tmp"
        tmp.symlink_to(new.name)
        os.replace(tmp, self.dir / "..data")  # the atomic swap the kubelet's AtomicWriter does


def served(port: int, ca: Path, sni: str | None = None) -> bytes:
    """DER of the certificate a new TLS connection is served (verified against `ca`)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    with (socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
          ctx.wrap_socket(raw, server_hostname=sni or "127.0.0.1") as tls):  # an IP sends no SNI
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def der_of(pem: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.read_text())


def until(what: str, pred: object, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():  # type: ignore[operator]
            return
        time.sleep(INTERVAL / 2)
    raise AssertionError(f"{what}: not seen in {timeout} s")


@pytest.fixture()
def setup(tmp_path: Path) -> Iterator[tuple[Certs, Mount, WebhookProc, dict[str, tuple[Path, Path]]]]:
    certs = make_certs(tmp_path / "pki")
    leaves = {name: make_node_cert(certs, name, dns=["localhost"]) for name in ("first", "second", "third")}
    mount = Mount(tmp_path / "tls")
    mount.publish(leaves["first"][0].read_bytes(), leaves["first"][1].read_bytes())
    hook = WebhookProc(tmp_path, certs.ca, mount.dir / "tls.crt", mount.dir / "tls.key", "127.0.0.1:1",
                       "--tls-reload-interval", str(INTERVAL)).wait_ready()
    try:
        yield certs, mount, hook, leaves
    finally:
        hook.stop()


def test_a_renewed_certificate_is_served_without_restart_and_a_broken_one_keeps_the_last_good(setup) -> None:  # type: ignore[no-untyped-def]
    certs, mount, hook, leaves = setup
    first, second, third = (der_of(leaves[n][0]) for n in ("first", "second", "third"))
    assert served(hook.port, certs.ca) == first
    kept_alive = requests.Session()
    kept_alive.verify, kept_alive.trust_env = str(certs.ca), False
    assert kept_alive.get(f"{hook.url}/healthz", timeout=10).text == "ok\n"

    # cert-manager renews: new files behind the swapped ..data symlink; new connections get them
    mount.publish(leaves["second"][0].read_bytes(), leaves["second"][1].read_bytes())
    until("the renewed certificate served", lambda: served(hook.port, certs.ca) == second)
    assert served(hook.port, certs.ca, sni="localhost") == second
    assert hook.session.get(f"{hook.url}/healthz", timeout=10).text == "ok\n"
    assert kept_alive.get(f"{hook.url}/healthz", timeout=10).text == "ok\n"  # open connections keep working
    assert hook.proc.poll() is None  # no restart

    # a pair whose key belongs to another certificate: logged, the last good pair keeps serving
    def failures() -> int:
        served(hook.port, certs.ca)  # checks happen on new connections
        return hook.log.read_text().count("does not load")

    mount.publish(leaves["third"][0].read_bytes(), leaves["first"][1].read_bytes())
    until("the broken pair logged", lambda: failures() == 1)
    assert served(hook.port, certs.ca) == second
    # a half-written certificate: logged too (a new file state), still the last good pair
    mount.publish(leaves["third"][0].read_bytes()[:60], leaves["third"][1].read_bytes())
    until("the truncated pair logged", lambda: failures() == 2)
    assert served(hook.port, certs.ca, sni="localhost") == second
    time.sleep(INTERVAL * 3)
    assert failures() == 2  # logged once per file state, not at every look

    # the good pair arrives: served
    mount.publish(leaves["third"][0].read_bytes(), leaves["third"][1].read_bytes())
    until("the good pair after the broken ones served", lambda: served(hook.port, certs.ca) == third)
    assert "loaded the renewed certificate" in hook.log.read_text()
    assert hook.proc.poll() is None


def test_reload_interval_flag_is_checked(tmp_path: Path) -> None:
    import subprocess
    import sys

    certs = make_certs(tmp_path / "pki")
    done = subprocess.run([sys.executable, "-m", "nodecompat.clients.cli", "webhook", "--listen", "127.0.0.1:1",
                           "--tls-cert", str(certs.cert), "--tls-key", str(certs.key), "--aggregator", "127.0.0.1:1",
                           "--tls-reload-interval", "-1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--tls-reload-interval" in done.stderr, done.stderr
