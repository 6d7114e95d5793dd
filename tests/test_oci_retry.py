"""Registry retries (nodecompat/oci/transport.py): 429 and 5xx answers are retried with backoff, up to
MAX_ATTEMPTS per request and within the operation's budget, honouring Retry-After.

The registry is real (Debian's docker-registry); the failures come from support_registry.RegistryProxy
(`fail_first`), which answers the first N requests itself with the chosen status and counts them, so
each test knows exactly how many failed answers the client saw before it succeeded or gave up.
"""

from __future__ import annotations

import pytest
import support_registry as sr

from nodecompat.oci.attach import attach_spec
from nodecompat.oci.discovery import fetch_compat_spec
from nodecompat.oci.errors import DeadlineExceededError, RegistryError, UnavailableError
from nodecompat.oci.transport import MAX_ATTEMPTS, RETRY_STATUSES

pytestmark = [pytest.mark.registry, sr.needs_registry]
registry = sr.registry


@pytest.fixture(scope="module")
def image(registry: sr.RegistryProcess, tmp_path_factory: pytest.TempPathFactory) -> tuple[sr.PushedImage, str]:
    """One image with a compatibility artifact, pushed straight to the registry (no proxy)."""
    img = sr.push_image(registry.host, "nc/retry", tmp_path_factory.mktemp("retry"))
    spec = sr.spec_yaml(note="retry")
    attach_spec(img.reference, spec, plain_http=True)
    return img, spec


def via(proxy: sr.RegistryProxy, img: sr.PushedImage, registry: sr.RegistryProcess) -> str:
    return img.reference.replace(registry.host, proxy.host)


@pytest.mark.parametrize("status", sorted(RETRY_STATUSES))
def test_fetch_succeeds_through_failures_short_of_the_attempt_limit(
    registry: sr.RegistryProcess, image: tuple[sr.PushedImage, str], status: int
) -> None:
    img, spec = image
    with sr.RegistryProxy(registry.host, fail_first=MAX_ATTEMPTS - 1, fail_status=status) as proxy:
        got = fetch_compat_spec(via(proxy, img, registry), plain_http=True, timeout=20)
    assert got.text == spec and got.image_digest == img.digest
    assert proxy.failed == MAX_ATTEMPTS - 1
    # the failed request was retried, unchanged, until it got through
    assert proxy.seen[:MAX_ATTEMPTS] == [proxy.seen[0]] * MAX_ATTEMPTS


def test_429_retry_after_is_honoured(registry: sr.RegistryProcess, image: tuple[sr.PushedImage, str]) -> None:
    img, spec = image
    with sr.RegistryProxy(registry.host, fail_first=1, fail_status=429, retry_after="1") as proxy:
        got = fetch_compat_spec(via(proxy, img, registry), plain_http=True, timeout=20)
    assert got.text == spec and proxy.failed == 1
    assert proxy.seen[0] == proxy.seen[1]  # the same request again...
    # ...not before the 1 s the registry asked for (the backoff alone would wait 0.1 s). A lower bound
    # the client's sleep guarantees, not a performance figure.
    assert proxy.seen_at[1] - proxy.seen_at[0] >= 1.0


def test_a_registry_that_keeps_failing_is_unavailable_after_the_attempt_limit(
    registry: sr.RegistryProcess, image: tuple[sr.PushedImage, str]
) -> None:
    img, _ = image
    with (
        sr.RegistryProxy(registry.host, fail_first=1_000, fail_status=503) as proxy,
        pytest.raises(RegistryError) as err,
    ):
        fetch_compat_spec(via(proxy, img, registry), plain_http=True, timeout=20)
    assert isinstance(err.value, UnavailableError) and err.value.code == "UNAVAILABLE"
    assert "HTTP 503" in str(err.value) and f"after {MAX_ATTEMPTS} attempts" in str(err.value)
    assert proxy.failed == MAX_ATTEMPTS  # one request, tried MAX_ATTEMPTS times, then given up


def test_retry_after_beyond_the_budget_stops_retrying(
    registry: sr.RegistryProcess, image: tuple[sr.PushedImage, str]
) -> None:
    img, _ = image
    with (
        sr.RegistryProxy(registry.host, fail_first=1_000, fail_status=429, retry_after="30") as proxy,
        pytest.raises(RegistryError) as err,
    ):
        fetch_compat_spec(via(proxy, img, registry), plain_http=True, timeout=2)
    assert isinstance(err.value, DeadlineExceededError) and err.value.code == "DEADLINE_EXCEEDED"
    assert "2s budget" in str(err.value) and "retrying" in str(err.value)
    assert proxy.failed == 1  # it did not sleep into the deadline nor ask again: it stopped at once
