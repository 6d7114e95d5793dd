"""Referrers API paging must not carry the registry's credentials to another host.

Two tiny HTTP servers on loopback: the "registry" answers the referrers call with one page whose
`Link: <...>; rel="next"` points at the second server; the second records what it receives. A
registry (or a man in the middle of a plain-HTTP one) must not be able to collect our token this way.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nodecompat.oci import mediatypes as mt
from nodecompat.oci.auth import RegistryAuth
from nodecompat.oci.discovery import open_repository
from nodecompat.oci.errors import UnavailableError
from nodecompat.oci.manifest import Descriptor
from nodecompat.oci.reference import parse_reference
from nodecompat.oci.sessions import Budget

SUBJECT = Descriptor(mt.OCI_MANIFEST, "sha256:" + "a" * 64, 10)


def _server(handler: type[BaseHTTPRequestHandler]) -> Iterator[ThreadingHTTPServer]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def collector() -> Iterator[tuple[ThreadingHTTPServer, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    class Collect(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(dict(self.headers))
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    for srv in _server(Collect):
        yield srv, seen


def test_next_page_on_another_host_is_refused_and_gets_no_credentials(collector) -> None:  # type: ignore[no-untyped-def]
    other, seen = collector
    other_url = f"http://127.0.0.1:{other.server_address[1]}/v2/r/referrers/{SUBJECT.digest}?page=2"

    class Registry(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", mt.OCI_INDEX)
            self.send_header("Link", f'<{other_url}>; rel="next"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    for reg in _server(Registry):
        ref = parse_reference(f"127.0.0.1:{reg.server_address[1]}/r:v1")
        repo = open_repository(ref, plain_http=True, auth=RegistryAuth(token="secret-token"), ca_file=None,
                               budget=Budget(10), pool=None)
        with pytest.raises(UnavailableError) as err:
            repo.referrers(SUBJECT, mt.ARTIFACT_TYPE)
    assert "another host" in str(err.value)
    assert seen == []


def test_a_registry_answering_deeply_nested_json_gets_invalid_argument() -> None:
    """A hostile registry's `[[[[...` manifest must be refused, not crash the caller with RecursionError."""
    import hashlib

    from nodecompat.oci.discovery import fetch_compat_spec
    from nodecompat.oci.errors import RegistryError

    deep = b"[" * 150_000 + b"]" * 150_000  # under the manifest size limit, with a matching digest
    digest = "sha256:" + hashlib.sha256(deep).hexdigest()

    class Evil(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", mt.OCI_MANIFEST)
            self.send_header("Docker-Content-Digest", digest)
            self.send_header("Content-Length", str(len(deep)))
            self.end_headers()
            self.wfile.write(deep)

        do_HEAD = do_GET

        def log_message(self, *a: object) -> None:
            pass

    for srv in _server(Evil):
        with pytest.raises(RegistryError) as err:
            fetch_compat_spec(f"127.0.0.1:{srv.server_address[1]}/app:v1", plain_http=True, timeout=10,
                              max_bytes=1 << 20)
    assert err.value.code == "INVALID_ARGUMENT" and "nested too deeply" in str(err.value), err.value
