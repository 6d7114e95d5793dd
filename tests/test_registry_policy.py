"""Registry SSRF and credentials (issue 8 item 6): the allow-list, redirects, credentials, plain HTTP.

The reproducer: a caller-named image made the daemon and the aggregator connect to any host and port
(the error text told closed, non-HTTP and silent ports apart: a port scanner), follow redirects to
other hosts, and send docker-config credentials over plain HTTP when the caller set plain_http.
Real parts: `nodecompat serve` processes, an in-process aggregator, Debian's docker-registry behind
support_registry.RegistryProxy (HTTPS with a test CA, a Bearer token server, blob redirects), and raw
TCP listeners that count the connections they get.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import support_registry as sr
from support_daemon import free_port, start_daemon
from support_fleet import aggregator

from nodecompat.oci.attach import attach_spec
from nodecompat.oci.auth import RegistryAuth
from nodecompat.oci.discovery import fetch_compat_spec
from nodecompat.oci.errors import PermissionDeniedError, RegistryError
from nodecompat.oci.policy import RegistryPolicy, parse_pattern
from nodecompat.server.node.node_service import RegistryOptions
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc, node_pb2, node_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
PLAIN_VM = str(REPO / "tests" / "fixtures" / "hosts" / "plain-vm")
registry = sr.registry
repo_name = sr.repo_name


# -- the pattern language ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "host", "port", "scheme", "allowed"),
    [
        ("registry.example.com", "registry.example.com", "", "https", True),
        ("registry.example.com", "REGISTRY.example.com", "443", "https", True),
        ("registry.example.com", "registry.example.com", "5000", "https", False),
        ("registry.example.com", "registry.example.com", "", "http", False),  # HTTPS only
        ("*.example.com", "r.example.com", "", "https", True),
        ("*.example.com", "example.com", "", "https", False),
        ("*.example.com", "a.b.example.com", "", "https", False),  # one label per *
        ("*.example.com", "evil.com", "", "https", False),
        ("*.example.com", "r.example.com.evil.com", "", "https", False),
        ("10.0.0.*", "10.0.0.7", "", "https", True),
        ("10.0.0.*", "10.0.1.7", "", "https", False),
        ("127.0.0.1:5000", "127.0.0.1", "5000", "https", True),
        ("127.0.0.1:5000", "127.0.0.1", "5001", "https", False),
        ("127.0.0.1:*", "127.0.0.1", "6553", "https", True),
        ("http://127.0.0.1:5000", "127.0.0.1", "5000", "http", True),
        ("http://127.0.0.1:5000", "127.0.0.1", "5000", "https", True),
        ("http://127.0.0.1", "127.0.0.1", "80", "http", True),
        ("http://127.0.0.1", "127.0.0.1", "", "http", True),
        ("http://127.0.0.1", "127.0.0.1", "443", "http", False),
        ("[::1]:5000", "[::1]", "5000", "https", True),
        ("*", "anything.example", "", "https", True),
        ("*", "anything.example", "22", "https", False),
        ("*:*", "169.254.169.254", "80", "https", True),
        ("*:*", "169.254.169.254", "80", "http", False),
        ("docker.io", "registry-1.docker.io", "", "https", True),  # Hub's API host
    ],
)
def test_pattern_matching(pattern: str, host: str, port: str, scheme: str, allowed: bool) -> None:
    assert RegistryPolicy.parse([pattern]).allows(host, port, scheme) is allowed


@pytest.mark.parametrize(
    "bad", ["", "http://", "a/b", "user@host", "host:0", "host:99999", "host:x", "**.a", "a b:c:d"]
)
def test_bad_patterns_are_refused_naming_the_flag(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_pattern(bad)


def test_flag_values_may_be_comma_separated() -> None:
    policy = RegistryPolicy.parse(["a.example.com,b.example.com", "http://127.0.0.1:5000"])
    assert policy.texts == ("a.example.com", "b.example.com", "http://127.0.0.1:5000")
    with pytest.raises(ValueError, match="--allowed-registries: registry pattern 'a/b'"):
        RegistryPolicy.parse(["a/b"])


# -- the reproducer: no scanning through the daemon -------------------------------------------------


class Listener:
    """A loopback TCP port that counts connections: 'silent' never answers, 'garbage' sends non-HTTP."""

    def __init__(self, mode: str) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.mode = mode
        self.accepted = 0
        self.stop = threading.Event()
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            self.conns.append(conn)
            if self.mode == "garbage":
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def listeners() -> Iterator[dict[str, Listener]]:
    made = {"silent": Listener("silent"), "garbage": Listener("garbage")}
    yield made
    for item in made.values():
        item.close()


def _validate(address: str, timeout: float = 20, **kw: object) -> node_pb2.ValidateImageResponse:
    with grpc.insecure_channel(address) as ch:
        return node_pb2_grpc.NodeServiceStub(ch).ValidateImage(node_pb2.ValidateImageRequest(**kw), timeout=timeout)


def _refusal(address: str, **kw: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        _validate(address, **kw)
    return err.value.code(), err.value.details() or ""


def test_default_daemon_connects_nowhere_and_says_the_same_for_every_port(
    tmp_path: Path, listeners: dict[str, Listener]
) -> None:
    daemon = start_daemon(tmp_path, "--host-root", PLAIN_VM, env=sr.env_without_docker(tmp_path))
    try:
        ports = {"closed": free_port(), "silent": listeners["silent"].port, "garbage": listeners["garbage"].port}
        answers = {}
        for kind, port in ports.items():
            for plain in (False, True):
                code, msg = _refusal(daemon.address, image=f"127.0.0.1:{port}/a/b:c1", plain_http=plain)
                assert code == grpc.StatusCode.PERMISSION_DENIED, msg
                answers[(kind, plain)] = msg.replace(str(port), "PORT")
        # Inline specs are unaffected.
        assert _validate(daemon.address, spec=sr.spec_yaml()).compatible
    finally:
        daemon.terminate()
    assert len({answers[(k, False)] for k in ports}) == 1 and len({answers[(k, True)] for k in ports}) == 1
    msg = answers[("silent", False)]
    assert "allow-list" in msg and "--allowed-registries 127.0.0.1:PORT" in msg and "no registries are allowed" in msg
    assert listeners["silent"].accepted == 0 and listeners["garbage"].accepted == 0  # refused before connecting


def test_plain_http_only_where_the_operator_allows_it(
    registry: sr.RegistryProcess, repo_name: str, tmp_path: Path
) -> None:
    img = sr.push_image(registry.host, repo_name, tmp_path)
    attach_spec(img.reference, sr.spec_yaml(note="policy"), plain_http=True)
    https_only = start_daemon(tmp_path, "--host-root", PLAIN_VM, "--allowed-registries", "127.0.0.1:*",
                              env=sr.env_without_docker(tmp_path))
    with_http = start_daemon(tmp_path, "--host-root", PLAIN_VM, "--allowed-registries", f"http://{registry.host}",
                             env=sr.env_without_docker(tmp_path))
    try:
        code, msg = _refusal(https_only.address, image=img.reference, plain_http=True)
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "plain HTTP" in msg and f"--allowed-registries http://{registry.host}" in msg
        assert _validate(with_http.address, image=img.reference, plain_http=True).compatible
        other = img.reference.replace(registry.host, f"127.0.0.1:{free_port()}")
        code, msg = _refusal(with_http.address, image=other, plain_http=True)
        assert code == grpc.StatusCode.PERMISSION_DENIED and f"allowed: http://{registry.host}" in msg
    finally:
        https_only.terminate()
        with_http.terminate()


def test_aggregator_refuses_unlisted_registries(tmp_path: Path, listeners: dict[str, Listener]) -> None:
    with aggregator() as agg, grpc.insecure_channel(agg.address) as ch:  # type: ignore[attr-defined]
        stub = fleet_pb2_grpc.FleetServiceStub(ch)
        request = fleet_pb2.ValidateFleetRequest(image=f"127.0.0.1:{listeners['garbage'].port}/a/b:c", plain_http=True)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.ValidateFleet(request, timeout=20))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "--allowed-registries" in (err.value.details() or "")
    assert listeners["garbage"].accepted == 0


def test_aggregator_with_a_policy_fetches(registry: sr.RegistryProcess, repo_name: str, tmp_path: Path) -> None:
    img = sr.push_image(registry.host, repo_name, tmp_path)
    attach_spec(img.reference, sr.spec_yaml(note="agg"), plain_http=True)
    options = RegistryOptions(policy=RegistryPolicy.parse([f"http://{registry.host}"]))
    with aggregator(registry=options) as agg, grpc.insecure_channel(agg.address) as ch:  # type: ignore[attr-defined]
        stub = fleet_pb2_grpc.FleetServiceStub(ch)
        answers = list(stub.ValidateFleet(fleet_pb2.ValidateFleetRequest(image=img.reference, plain_http=True),
                                          timeout=20))
    assert answers[-1].summary.image_digest == img.digest


# -- redirects and credentials ----------------------------------------------------------------------


def _attached(registry: sr.RegistryProcess, repo_name: str, tmp_path: Path) -> sr.PushedImage:
    img = sr.push_image(registry.host, repo_name, tmp_path)
    attach_spec(img.reference, sr.spec_yaml(note="redirect"), plain_http=True)
    return img


def test_blob_redirects_follow_only_to_allowed_hosts_and_never_carry_credentials(
    registry: sr.RegistryProcess, repo_name: str, tmp_path: Path
) -> None:
    img = _attached(registry, repo_name, tmp_path)
    pki = sr.make_tls_files(tmp_path / "pki")
    ca = str(pki[0])
    with (
        sr.RegistryProxy(registry.host) as cdn,  # the "CDN": another host:port, plain HTTP
        sr.RegistryProxy(registry.host, bearer_users={sr.USER: sr.PASSWORD}, tls=pki,
                         redirect_blobs_to=f"http://{cdn.host}") as origin,
    ):
        ref = img.reference.replace(registry.host, origin.host)
        auth = RegistryAuth.from_sources(username=sr.USER, password=sr.PASSWORD, docker_config=False)
        only_origin = RegistryPolicy.parse([origin.host])
        with pytest.raises(RegistryError) as info:
            fetch_compat_spec(ref, ca_file=ca, auth=auth, policy=only_origin, timeout=20)
        assert info.value.code == "PERMISSION_DENIED"
        assert f"redirect target of {origin.host}: {cdn.host}" in str(info.value)
        assert not cdn.seen  # refused before connecting
        both = RegistryPolicy.parse([origin.host, f"http://{cdn.host}"])
        assert "redirect" in fetch_compat_spec(ref, ca_file=ca, auth=auth, policy=both, timeout=20).text
        assert any("/blobs/" in s for s in cdn.seen)
        assert cdn.authorizations and not any(cdn.authorizations), "credentials went to another host"
        assert any(a.startswith("Bearer ") for a in origin.authorizations)
        # Without a policy (the operator's CLI) the redirect is followed, still without credentials.
        cdn.authorizations.clear()
        assert "redirect" in fetch_compat_spec(ref, ca_file=ca, auth=auth, timeout=20).text
        assert cdn.authorizations and not any(cdn.authorizations)


def test_credentials_are_never_sent_over_plain_http(
    registry: sr.RegistryProcess, repo_name: str, tmp_path: Path
) -> None:
    """The reproducer: docker-config credentials for the host, the caller sets plain_http."""
    img = _attached(registry, repo_name, tmp_path)
    with sr.RegistryProxy(registry.host, bearer_users={sr.USER: sr.PASSWORD}) as proxy:
        ref = img.reference.replace(registry.host, proxy.host)
        cfg = sr.docker_config(tmp_path / "docker", proxy.host, sr.USER, sr.PASSWORD)
        env = {**sr.env_without_docker(tmp_path), "DOCKER_CONFIG": str(cfg)}
        daemon = start_daemon(tmp_path, "--host-root", PLAIN_VM, "--allowed-registries", f"http://{proxy.host}",
                              env=env)
        try:
            code, msg = _refusal(daemon.address, image=ref, plain_http=True)
        finally:
            daemon.terminate()
        assert code == grpc.StatusCode.UNAUTHENTICATED and "never sends credentials" in msg, msg
        assert proxy.token_requests == 0 and not any(proxy.authorizations)
        # The CLI (no policy) keeps the same rule, with explicit credentials too.
        explicit = RegistryAuth.from_sources(username=sr.USER, password=sr.PASSWORD, docker_config=False)
        with pytest.raises(RegistryError, match="never sends credentials") as info:
            fetch_compat_spec(ref, plain_http=True, auth=explicit, timeout=20)
        assert info.value.code == "UNAUTHENTICATED"
        assert proxy.token_requests == 0 and not any(proxy.authorizations)


def test_a_token_realm_is_checked_like_a_redirect(
    registry: sr.RegistryProcess, repo_name: str, tmp_path: Path, listeners: dict[str, Listener]
) -> None:
    """The realm is a URL the registry names: with a policy, an unlisted realm host is never contacted."""
    img = _attached(registry, repo_name, tmp_path)
    pki = sr.make_tls_files(tmp_path / "pki")
    elsewhere = f"http://127.0.0.1:{listeners['silent'].port}/token"
    with sr.RegistryProxy(registry.host, bearer_users={sr.USER: sr.PASSWORD}, tls=pki, realm=elsewhere) as proxy:
        ref = img.reference.replace(registry.host, proxy.host)
        auth = RegistryAuth.from_sources(username=sr.USER, password=sr.PASSWORD, docker_config=False)
        with pytest.raises(RegistryError) as info:
            fetch_compat_spec(ref, ca_file=str(pki[0]), auth=auth, policy=RegistryPolicy.parse([proxy.host]),
                              timeout=20)
        assert info.value.code == "PERMISSION_DENIED" and f"token server of {proxy.host}:" in str(info.value)
        # Allowed for plain HTTP, the realm still never gets credentials over plain HTTP.
        allow_realm = RegistryPolicy.parse([proxy.host, f"http://127.0.0.1:{listeners['silent'].port}"])
        with pytest.raises(RegistryError, match="never sends credentials over plain HTTP") as info:
            fetch_compat_spec(ref, ca_file=str(pki[0]), auth=auth, policy=allow_realm, timeout=20)
        assert info.value.code == "UNAUTHENTICATED"
    assert listeners["silent"].accepted == 0


@pytest.mark.parametrize(
    ("pattern", "netloc"),
    [
        ("registry.example.com:*", "registry.example.com:x@evil.test"),  # urllib3 connects to evil.test
        ("[::1]", "[::1]@evil.test"),
        ("[::1]:5000", "[::1]:5000@evil.test"),
        ("*.example.com", "evil%2f@r.example.com"),
        ("*:*", "a:b:c"),
        ("registry.example.com:*", "registry.example.com:443#x"),
        ("registry.example.com:*", "registry.example.com:-1"),
    ],
)
def test_a_netloc_with_userinfo_or_a_bad_port_is_never_allowed(pattern: str, netloc: str) -> None:
    """check() gets URL authorities (redirects, token realms): only HOST[:DIGITS] can pass, so the host
    checked is the host a URL parser connects to."""
    with pytest.raises(PermissionDeniedError):
        RegistryPolicy.parse([pattern]).check(netloc, "https")


def test_allowed_forms_still_pass() -> None:
    policy = RegistryPolicy.parse(["[::1]", "r.example.com:*"])
    for netloc in ("[::1]", "[::1]:443", "R.Example.COM", "r.example.com:0443", "r.example.com:5000"):
        policy.check(netloc, "https")


def test_a_token_realm_with_userinfo_is_not_mistaken_for_an_allowed_host(
    registry: sr.RegistryProcess, repo_name: str, tmp_path: Path, listeners: dict[str, Listener]
) -> None:
    """Realm https://[::1]@127.0.0.1:PORT/token names host 127.0.0.1 (userinfo '[::1]'): with '[::1]'
    allowed it was let through and got the registry's credentials; now PERMISSION_DENIED, never contacted."""
    img = _attached(registry, repo_name, tmp_path)
    pki = sr.make_tls_files(tmp_path / "pki")
    elsewhere = f"https://[::1]@127.0.0.1:{listeners['silent'].port}/token"
    with sr.RegistryProxy(registry.host, bearer_users={sr.USER: sr.PASSWORD}, tls=pki, realm=elsewhere) as proxy:
        ref = img.reference.replace(registry.host, proxy.host)
        auth = RegistryAuth.from_sources(username=sr.USER, password=sr.PASSWORD, docker_config=False)
        with pytest.raises(RegistryError) as info:
            fetch_compat_spec(ref, ca_file=str(pki[0]), auth=auth, policy=RegistryPolicy.parse([proxy.host, "[::1]"]),
                              timeout=5)
        assert info.value.code == "PERMISSION_DENIED" and f"token server of {proxy.host}:" in str(info.value)
    assert listeners["silent"].accepted == 0


def test_allowed_targets_do_not_tell_closed_from_non_http_ports(
    tmp_path: Path, listeners: dict[str, Listener]
) -> None:
    """A server with a policy says 'no usable HTTP answer', never the socket-level reason."""
    daemon = start_daemon(tmp_path, "--host-root", PLAIN_VM, "--allowed-registries", "http://127.0.0.1:*",
                          env=sr.env_without_docker(tmp_path))
    try:
        texts = set()
        for port in (free_port(), listeners["garbage"].port):
            code, msg = _refusal(daemon.address, image=f"127.0.0.1:{port}/a/b:c1", plain_http=True)
            assert code == grpc.StatusCode.UNAVAILABLE, msg
            texts.add(msg.replace(str(port), "PORT"))
    finally:
        daemon.terminate()
    assert len(texts) == 1, texts
    (text,) = texts
    assert "no usable HTTP answer" in text and "refused" not in text.lower() and "SSH" not in text


auth_registry = sr.auth_registry


def test_daemon_sends_docker_config_credentials_over_https_to_their_host(
    auth_registry: sr.RegistryProcess, repo_name: str, tmp_path: Path
) -> None:
    """The legitimate path still works: an allowed HTTPS registry, the docker config's entry for it."""
    assert auth_registry.tls is not None
    ca = str(auth_registry.tls[0])
    img = sr.push_image(auth_registry.host, repo_name, tmp_path, creds=f"{sr.USER}:{sr.PASSWORD}")
    attach_spec(img.reference, sr.spec_yaml(note="creds"), ca_file=ca,
                auth=RegistryAuth.from_sources(username=sr.USER, password=sr.PASSWORD, docker_config=False))
    cfg = sr.docker_config(tmp_path / "docker", auth_registry.host, sr.USER, sr.PASSWORD)
    env = {**sr.env_without_docker(tmp_path), "DOCKER_CONFIG": str(cfg)}
    daemon = start_daemon(tmp_path, "--host-root", PLAIN_VM, "--allowed-registries", auth_registry.host,
                          "--ca-file", ca, env=env)
    try:
        assert _validate(daemon.address, image=img.reference).compatible
        code, msg = _refusal(daemon.address, image=img.reference, plain_http=True)  # HTTPS-only pattern
        assert code == grpc.StatusCode.PERMISSION_DENIED and "plain HTTP" in msg
    finally:
        daemon.terminate()
