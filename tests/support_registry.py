"""Real registries for the OCI tests: Debian's docker-registry (distribution 2.8.2), images built
as OCI layouts in Python and pushed with skopeo, and a small in-process HTTP proxy.

Why a proxy: distribution 2.8.2 has no OCI 1.1 referrers API (GET /v2/<repo>/referrers/<digest>
answers 404) and ignores `subject`, so only the referrers *tag schema* fallback can be exercised
against it directly. `RegistryProxy` sits in front of the real registry and forwards every request
unchanged, and optionally:
- `referrers=True`: remembers every manifest PUT that carries a `subject`, answers the PUT with an
  `OCI-Subject` header and serves GET /v2/<repo>/referrers/<digest> (with `artifactType` filtering
  and `OCI-Filters-Applied`) from what it saw — the registry-side behaviour the OCI 1.1
  distribution spec describes, including "artifactType = config.mediaType when the manifest has
  none";
- `delay=S`: sleeps S seconds before forwarding (a slow registry; the kernel here has no netem);
- `tamper_blobs=True`: flips the last byte of every blob it returns (a corrupting registry/cache);
- `fail_first=N, fail_status=503, retry_after=None`: answers the first N requests with `fail_status`
  (and a `Retry-After` header when given) without forwarding them, counting them in `failed`: a
  registry that is overloaded (429) or briefly down (5xx);
- `bearer_users={user: password}`: demands `Authorization: Bearer` on /v2/ with a Docker-style
  challenge and serves the token endpoint at /token (basic credentials checked there; `static_tokens`
  are accepted too, like a pre-issued OAuth token). Distribution's htpasswd mode only does Basic,
  and the Bearer flow is what Docker Hub, GHCR and Harbor use.
The registry itself stays real: storage, uploads, tags, auth.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import ssl
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from support_daemon import free_port

from nodecompat.oci import mediatypes as mt

HAVE_TOOLS = bool(shutil.which("docker-registry") and shutil.which("skopeo"))
needs_registry = pytest.mark.skipif(
    not HAVE_TOOLS,
    reason="needs Debian's docker-registry and skopeo on PATH (apt-get install docker-registry skopeo)",
)
USER = "tester"
PASSWORD = "s3cret-pw"




def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- the registry process ----------------------------------------------------------------------


@dataclass
class RegistryProcess:
    root: Path
    htpasswd: Path | None = None
    tls: tuple[Path, Path, Path] | None = None  # (ca.pem, cert.pem, key.pem)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RegistryProcess:
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        auth = ""
        if self.htpasswd is not None:
            auth = f"auth:\n  htpasswd:\n    realm: nodecompat-test\n    path: {self.htpasswd}\n"
        tls = ""
        if self.tls is not None:
            tls = f"  tls:\n    certificate: {self.tls[1]}\n    key: {self.tls[2]}\n"
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'data'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n  secret: nodecompat-test-secret\n" + tls + auth
        )
        log = open(self.root / "registry.log", "wb")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {(self.root / 'registry.log').read_text()}")
            try:
                scheme = "https" if self.tls else "http"
                verify = str(self.tls[0]) if self.tls else True
                if requests.get(f"{scheme}://{self.host}/v2/", timeout=1, verify=verify).status_code in (
                    200,
                    401,
                ):
                    return self
            except requests.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("docker-registry did not come up within 15 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def write_htpasswd(path: Path, user: str, password: str) -> None:
    """bcrypt htpasswd line, the only hash distribution accepts (PyPI `bcrypt`)."""
    import bcrypt

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    path.write_text(f"{user}:{hashed}\n")


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    if not HAVE_TOOLS:
        pytest.skip("needs Debian's docker-registry and skopeo on PATH")
    reg = RegistryProcess(tmp_path_factory.mktemp("registry")).start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    if not HAVE_TOOLS:
        pytest.skip("needs Debian's docker-registry and skopeo on PATH")
    root = tmp_path_factory.mktemp("auth-registry")
    write_htpasswd(root / "htpasswd", USER, PASSWORD)
    # HTTPS: nodecompat never sends credentials over plain HTTP (docs/security.md); tls[0] is the CA.
    reg = RegistryProcess(root / "reg", htpasswd=root / "htpasswd", tls=make_tls_files(root / "pki")).start()
    yield reg
    reg.stop()


def make_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for IP 127.0.0.1, made with the openssl CLI."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key, csr = directory / "server.pem", directory / "server.key", directory / "server.csr"
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = [
        [
            "openssl",
            "req",
            "-x509",
            *ec,
            "-keyout",
            ca_key,
            "-out",
            ca,
            "-days",
            "2",
            "-subj",
            "/CN=nc-test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
        ["openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            ca,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-out",
            cert,
            "-days",
            "2",
            "-extfile",
            ext,
        ],
    ]
    for cmd in run:
        subprocess.run([str(c) for c in cmd], check=True, capture_output=True, timeout=30)
    return ca, cert, key


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    if not HAVE_TOOLS or not shutil.which("openssl"):
        pytest.skip("needs docker-registry, skopeo and openssl on PATH")
    root = tmp_path_factory.mktemp("tls-registry")
    reg = RegistryProcess(root / "reg", tls=make_tls_files(root / "pki")).start()
    yield reg
    reg.stop()


@pytest.fixture
def repo_name() -> str:
    return f"nc/t{uuid.uuid4().hex[:12]}"


# -- OCI layouts built in Python, pushed with skopeo -------------------------------------------


@dataclass
class PushedImage:
    reference: str  # host/repo:tag
    digest: str  # what the tag points at (index or manifest)
    media_type: str
    platforms: dict[str, str] = field(default_factory=dict)  # "os/arch" -> manifest digest

    def by_digest(self, digest: str | None = None) -> str:
        return f"{self.reference.rsplit(':', 1)[0]}@{digest or self.digest}"


def _layer(content: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(content)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(content))
    return gzip.compress(buf.getvalue(), mtime=0)


class LayoutWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')

    def blob(self, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
        digest = sha256(data)
        (self.path / "blobs" / "sha256" / digest.split(":", 1)[1]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}

    def image(self, os_name: str, arch: str, payload: bytes) -> dict[str, Any]:
        layer_bytes = _layer(payload)
        diff_id = sha256(gzip.decompress(layer_bytes))
        config = json.dumps(
            {
                "architecture": arch,
                "os": os_name,
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                "config": {"Cmd": ["/hello"]},
            }
        ).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": mt.OCI_MANIFEST,
                "config": self.blob(config, mt.OCI_CONFIG),
                "layers": [self.blob(layer_bytes, mt.OCI_LAYER_TAR_GZIP)],
            }
        ).encode()
        return self.blob(manifest, mt.OCI_MANIFEST)


def build_layout(path: Path, tag: str, platforms: list[str] | None = None) -> PushedImage:
    """A single-platform image (platforms None) or a multi-platform index; returns digests."""
    writer = LayoutWriter(path)
    tag_ann = {"org.opencontainers.image.ref.name": tag}
    if not platforms:
        top = writer.image("linux", "amd64", f"hello {uuid.uuid4()}".encode())
        info = PushedImage("", top["digest"], mt.OCI_MANIFEST, {"linux/amd64": top["digest"]})
    else:
        entries = []
        plats = {}
        for plat in platforms:
            os_name, arch = plat.split("/")
            desc = writer.image(os_name, arch, f"hello {plat} {uuid.uuid4()}".encode())
            desc["platform"] = {"os": os_name, "architecture": arch}
            entries.append(desc)
            plats[plat] = desc["digest"]
        index = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}).encode()
        top = writer.blob(index, mt.OCI_INDEX)
        info = PushedImage("", top["digest"], mt.OCI_INDEX, plats)
    (path / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": mt.OCI_INDEX,
                "manifests": [{**top, "annotations": tag_ann}],
            }
        )
    )
    return info


def push_image(
    host: str,
    repo: str,
    tmp: Path,
    *,
    tag: str = "v1",
    platforms: list[str] | None = None,
    creds: str | None = None,
) -> PushedImage:
    """Build an image layout and `skopeo copy` it to host/repo:tag keeping its digests."""
    layout = tmp / f"layout-{uuid.uuid4().hex[:8]}"
    info = build_layout(layout, tag, platforms)
    cmd = ["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false", "--preserve-digests"]
    if platforms:
        cmd.append("--all")
    if creds:
        cmd += ["--dest-creds", creds]
    cmd += [f"oci:{layout}:{tag}", f"docker://{host}/{repo}:{tag}"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    info.reference = f"{host}/{repo}:{tag}"
    return info


def docker_config(path: Path, host: str, user: str, password: str, *, encoded: bool = True) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if encoded:
        entry: dict[str, str] = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    else:
        entry = {"username": user, "password": password}
    (path / "config.json").write_text(json.dumps({"auths": {host: entry}}))
    return path


# -- the proxy ---------------------------------------------------------------------------------

_REFERRERS_RE = re.compile(r"^/v2/(?P<repo>.+)/referrers/(?P<digest>sha256:[0-9a-f]{64})$")
_MANIFEST_RE = re.compile(r"^/v2/(?P<repo>.+)/manifests/(?P<ref>[^/]+)$")
_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-authenticate", "upgrade", "te", "trailer"}


class RegistryProxy:
    """Forwards to a real registry; optionally adds the referrers API, delay, failures or blob tampering."""

    def __init__(
        self,
        upstream: str,
        *,
        referrers: bool = False,
        delay: float = 0.0,
        tamper_blobs: bool = False,
        bearer_users: dict[str, str] | None = None,
        static_tokens: frozenset[str] = frozenset(),
        fail_first: int = 0,
        fail_status: int = 503,
        retry_after: str | None = None,
        tls: tuple[Path, Path, Path] | None = None,
        redirect_blobs_to: str | None = None,
        realm: str | None = None,
    ) -> None:
        self.upstream = upstream
        self.tls = tls  # (ca, cert, key): serve HTTPS (the upstream stays plain HTTP)
        self.redirect_blobs_to = redirect_blobs_to  # "scheme://host": blob GETs answer 307 there
        self.realm = realm  # the Bearer challenge's realm URL (default: this proxy's /token)
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.retry_after = retry_after
        self.failed = 0  # requests answered with fail_status
        self.bearer_users = bearer_users
        self.static_tokens = static_tokens
        self.issued: set[str] = set()
        self.token_requests = 0
        self.referrers = referrers
        self.delay = delay
        self.tamper_blobs = tamper_blobs
        self.index: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.referrers_calls = 0
        self.seen: list[str] = []  # "METHOD path" of every request, in order
        self.seen_at: list[float] = []  # time.monotonic() of each request in `seen`
        self.authorizations: list[str] = []  # the Authorization header of each request in `seen` ("" = none)
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # header and body go out in two writes

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                try:
                    proxy.handle(self)
                except OSError:  # upstream gone (e.g. a delayed request outliving its test): drop it
                    self.close_connection = True

            do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[1]), str(tls[2]))
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def __enter__(self) -> RegistryProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        if self.delay:
            time.sleep(self.delay)
        url = urlsplit(req.path)
        with self.lock:
            self.seen.append(f"{req.command} {url.path}")
            self.seen_at.append(time.monotonic())
            self.authorizations.append(req.headers.get("Authorization", ""))
            fail = self.failed < self.fail_first
            if fail:
                self.failed += 1
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        if fail:
            extra = [("Retry-After", self.retry_after)] if self.retry_after is not None else []
            body = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": "injected failure"}]}).encode()
            _send(req, self.fail_status, body, [("Content-Type", "application/json"), *extra])
            return
        if self.bearer_users is not None and url.path == "/token":
            self._serve_token(req, parse_qs(url.query))
            return
        if self.bearer_users is not None and not self._bearer_ok(req, url.path):
            return
        if self.redirect_blobs_to and req.command == "GET" and "/blobs/" in url.path:
            _send(req, 307, b"", [("Location", f"{self.redirect_blobs_to}{req.path}")])
            return
        match = _REFERRERS_RE.match(url.path)
        if self.referrers and match and req.command == "GET":
            self._serve_referrers(req, match["repo"], match["digest"], parse_qs(url.query))
            return
        conn = http.client.HTTPConnection(self.upstream, timeout=30)
        headers = {k: v for k, v in req.headers.items() if k.lower() not in _HOP}
        conn.request(req.command, req.path, body=body or None, headers=headers)
        resp = conn.getresponse()
        data = resp.read() if req.command != "HEAD" else b""
        out_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP]
        conn.close()
        if (
            self.tamper_blobs
            and req.command == "GET"
            and "/blobs/" in url.path
            and resp.status == 200
            and data
        ):
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        manifest = _MANIFEST_RE.match(url.path)
        if self.referrers and manifest and req.command == "PUT" and resp.status == 201:
            subject = self._record(manifest["repo"], body, dict(resp.getheaders()))
            if subject:
                out_headers.append(("OCI-Subject", subject))
        req.send_response(resp.status)
        for key, value in out_headers:
            req.send_header(key, value)
        req.end_headers()
        if data:
            req.wfile.write(data)

    def _bearer_ok(self, req: BaseHTTPRequestHandler, path: str) -> bool:
        header = req.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else None
        with self.lock:
            ok = token is not None and (token in self.issued or token in self.static_tokens)
        if ok:
            return True
        repo = _MANIFEST_RE.match(path) or re.match(r"^/v2/(?P<repo>.+)/(blobs|referrers|tags)/", path)
        scope = f',scope="repository:{repo["repo"]}:pull"' if repo else ""
        _send(
            req,
            401,
            b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
            [
                ("WWW-Authenticate", f'Bearer realm="{self.realm or f"{self.scheme}://{self.host}/token"}",service="nc-test"{scope}'),
                ("Content-Type", "application/json"),
            ],
        )
        return False

    def _serve_token(self, req: BaseHTTPRequestHandler, query: dict[str, list[str]]) -> None:
        header = req.headers.get("Authorization", "")
        with self.lock:
            self.token_requests += 1
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            user = password = ""
        assert self.bearer_users is not None
        if (
            not header.startswith("Basic ")
            or self.bearer_users.get(user) != password
            or not query.get("service")
        ):
            _send(req, 401, b'{"details":"bad credentials"}', [("Content-Type", "application/json")])
            return
        token = uuid.uuid4().hex
        with self.lock:
            self.issued.add(token)
        body = json.dumps({"token": token, "expires_in": 300}).encode()
        _send(req, 200, body, [("Content-Type", "application/json")])

    def _record(self, repo: str, body: bytes, headers: dict[str, str]) -> str | None:
        try:
            doc = json.loads(body)
        except ValueError:
            return None
        subject = doc.get("subject") if isinstance(doc, dict) else None
        if not isinstance(subject, dict) or "digest" not in subject:
            return None
        artifact_type = doc.get("artifactType") or (doc.get("config") or {}).get("mediaType")
        desc = {"mediaType": doc.get("mediaType", mt.OCI_MANIFEST), "digest": sha256(body), "size": len(body)}
        if artifact_type:
            desc["artifactType"] = artifact_type
        if doc.get("annotations"):
            desc["annotations"] = doc["annotations"]
        with self.lock:
            entries = self.index.setdefault((repo, subject["digest"]), [])
            if all(e["digest"] != desc["digest"] for e in entries):
                entries.append(desc)
        return str(subject["digest"])

    def _serve_referrers(
        self, req: BaseHTTPRequestHandler, repo: str, digest: str, query: dict[str, list[str]]
    ) -> None:
        with self.lock:
            self.referrers_calls += 1
            entries = list(self.index.get((repo, digest), []))
        wanted = query.get("artifactType")
        if wanted:
            entries = [e for e in entries if e.get("artifactType") in wanted]
        body = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}).encode()
        req.send_response(200)
        req.send_header("Content-Type", mt.OCI_INDEX)
        req.send_header("Content-Length", str(len(body)))
        if wanted:
            req.send_header("OCI-Filters-Applied", "artifactType")
        req.end_headers()
        req.wfile.write(body)


def _send(req: BaseHTTPRequestHandler, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
    req.send_response(status)
    for key, value in headers:
        req.send_header(key, value)
    req.send_header("Content-Length", str(len(body)))
    req.end_headers()
    if req.command != "HEAD":
        req.wfile.write(body)


def push_raw_artifact(
    host: str,
    repo: str,
    subject: dict[str, Any],
    *,
    layers: list[bytes | tuple[bytes, str]],
    annotations: dict[str, str] | None = None,
    artifact_type: str | None = mt.ARTIFACT_TYPE,
    config_media_type: str = mt.OCI_EMPTY,
    index_entry: dict[str, Any] | None = None,
    size_override: int | None = None,
) -> str:
    """Push a hand-made artifact manifest (for cases attach_spec would never produce) with plain
    requests, and add it to the referrers tag index. `index_entry` overrides the index descriptor
    fields; `size_override` lies about the first layer's size in the manifest."""
    base = f"http://{host}/v2/{repo}"

    def blob(data: bytes) -> str:
        digest = sha256(data)
        loc = requests.post(f"{base}/blobs/uploads/", timeout=10).headers["Location"]
        url = loc if loc.startswith("http") else f"http://{host}{loc}"
        sep = "&" if "?" in url else "?"
        requests.put(f"{url}{sep}digest={digest}", data=data, timeout=10).raise_for_status()
        return digest

    config_digest = blob(b"{}")
    layer_descs = []
    for item in layers:
        data, media = (item, mt.SPEC_MEDIA_TYPE) if isinstance(item, bytes) else item
        layer_descs.append({"mediaType": media, "digest": blob(data), "size": len(data)})
    if size_override is not None and layer_descs:
        layer_descs[0]["size"] = size_override
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": config_media_type, "digest": config_digest, "size": 2},
        "layers": layer_descs,
        "subject": subject,
    }
    if artifact_type:
        manifest["artifactType"] = artifact_type
    if annotations:
        manifest["annotations"] = annotations
    body = json.dumps(manifest).encode()
    digest = sha256(body)
    requests.put(
        f"{base}/manifests/{digest}", data=body, headers={"Content-Type": mt.OCI_MANIFEST}, timeout=10
    ).raise_for_status()
    entry: dict[str, Any] = {"mediaType": mt.OCI_MANIFEST, "digest": digest, "size": len(body)}
    if artifact_type:
        entry["artifactType"] = artifact_type
    if annotations:
        entry["annotations"] = annotations
    entry.update(index_entry or {})
    entry = {k: v for k, v in entry.items() if v is not None}
    tag = subject["digest"].replace(":", "-")
    got = requests.get(f"{base}/manifests/{tag}", headers={"Accept": mt.OCI_INDEX}, timeout=10)
    index: dict[str, Any] = (
        got.json()
        if got.status_code == 200
        else {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}
    )
    index["manifests"].append(entry)
    requests.put(
        f"{base}/manifests/{tag}",
        data=json.dumps(index).encode(),
        headers={"Content-Type": mt.OCI_INDEX},
        timeout=10,
    ).raise_for_status()
    return digest


def subject_of(image: PushedImage, digest: str | None = None) -> dict[str, Any]:
    """The descriptor of an image (or one of its platform manifests) as the registry reports it."""
    host, _, rest = image.reference.partition("/")
    repo = rest.rsplit(":", 1)[0]
    resp = requests.head(
        f"http://{host}/v2/{repo}/manifests/{digest or image.digest}",
        headers={"Accept": mt.MANIFEST_ACCEPT},
        timeout=10,
    )
    resp.raise_for_status()
    return {
        "mediaType": resp.headers["Content-Type"],
        "digest": resp.headers["Docker-Content-Digest"],
        "size": int(resp.headers["Content-Length"]),
    }


def spec_yaml(tag: str = "default", note: str = "") -> str:
    """A small valid v1alpha1 compatibility spec."""
    return (
        "version: v1alpha1\n"
        "compatibilities:\n"
        f"- description: test spec {note}\n"
        f"  tag: {tag}\n"
        "  rules:\n"
        "  - name: kernel\n"
        "    matchFeatures:\n"
        "    - feature: kernel.version\n"
        "      matchExpressions:\n"
        '        major: {op: Gt, value: ["2"]}\n'
    )


def env_without_docker(tmp: Path) -> dict[str, str]:
    """Process environment whose docker config lookups find nothing unless told otherwise."""
    env = dict(os.environ)
    env["DOCKER_CONFIG"] = str(tmp / "no-docker-config")
    return env
