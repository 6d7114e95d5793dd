"""A thread-safe cache in front of fetch_compat_spec for the daemon.

Two layers with different lifetimes, because they go stale differently:
- reference (+platform, transport options, credentials identity) -> image digest + chosen artifact,
  for `tag_ttl`: a tag can be re-pushed and a new artifact attached at any time, so this is short.
  Digest references need no tag resolution, but their referrers list can still grow, so they use
  the same short entry for the artifact choice.
- spec text by (registry, repository, artifact digest) for `spec_ttl`: content-addressed, so it only
  expires to bound memory; keyed by repository too so a caller never gets a spec from a repository
  it could not read.
Errors are not cached. Both maps are LRU-bounded by `max_entries`. A SessionPool is kept so
repeated fetches reuse keep-alive connections and bearer tokens.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from nodecompat.engine.limits import MAX_SPEC_BYTES
from nodecompat.oci.auth import RegistryAuth
from nodecompat.oci.discovery import Discovered, FetchedSpec, discover, fetch_artifact_spec, open_repository
from nodecompat.oci.errors import InvalidArgumentError
from nodecompat.oci.platform import parse_platform
from nodecompat.oci.policy import RegistryPolicy
from nodecompat.oci.reference import parse_reference
from nodecompat.oci.sessions import Budget, SessionPool

K = TypeVar("K")
V = TypeVar("V")
_SpecEntry = tuple[str, tuple[str, ...], str | None]  # spec text, warnings while fetching, created


class _TTLMap(Generic[K, V]):
    def __init__(self, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] < time.monotonic():
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return item[1]

    def put(self, key: K, value: V) -> None:
        if self.ttl <= 0 or self.max_entries <= 0:
            return
        self._items[key] = (time.monotonic() + self.ttl, value)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class CacheStats:
    tag_hits: int
    tag_misses: int
    spec_hits: int
    spec_misses: int
    tag_entries: int
    spec_entries: int


class SpecCache:
    """`fetch()` has fetch_compat_spec's signature and result; counters say what was reused."""

    def __init__(self, tag_ttl: float = 30.0, spec_ttl: float = 3600.0, max_entries: int = 256) -> None:
        self._lock = threading.Lock()
        self._tags: _TTLMap[tuple[object, ...], Discovered] = _TTLMap(tag_ttl, max_entries)
        self._specs: _TTLMap[tuple[str, str, str], _SpecEntry] = _TTLMap(spec_ttl, max_entries)
        self.pool = SessionPool()
        self.tag_hits = self.tag_misses = self.spec_hits = self.spec_misses = 0

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self.tag_hits, self.tag_misses, self.spec_hits, self.spec_misses,
                              len(self._tags), len(self._specs))

    def clear(self) -> None:
        with self._lock:
            self._tags = _TTLMap(self._tags.ttl, self._tags.max_entries)
            self._specs = _TTLMap(self._specs.ttl, self._specs.max_entries)

    def fetch(
        self,
        reference: str,
        *,
        platform: str | None = None,
        plain_http: bool = False,
        auth: RegistryAuth | None = None,
        ca_file: str | None = None,
        timeout: float = 30.0,
        max_bytes: int = MAX_SPEC_BYTES,
        policy: RegistryPolicy | None = None,
    ) -> FetchedSpec:
        """fetch_compat_spec through the caches; the policy is checked before any cache is consulted."""
        ref = parse_reference(reference)
        plat = parse_platform(platform) if platform else None
        tag_key = (str(ref), str(plat) if plat else None, plain_http, ca_file,
                   auth.identity() if auth else "anon")
        budget = Budget(timeout)
        repo = open_repository(ref, plain_http=plain_http, auth=auth, ca_file=ca_file, budget=budget,
                               pool=self.pool, policy=policy)
        with self._lock:
            found = self._tags.get(tag_key)
            if found is None:
                self.tag_misses += 1
            else:
                self.tag_hits += 1
        if found is None:
            found = discover(repo, plat)
            with self._lock:  # the manifest body is only needed right now; don't hold it for tag_ttl
                self._tags.put(tag_key, replace(found, manifest_body=None))
        warnings = list(found.warnings)
        spec_key = (ref.registry, ref.repository, found.artifact.digest)
        with self._lock:
            cached = self._specs.get(spec_key)
            if cached is None:
                self.spec_misses += 1
            else:
                self.spec_hits += 1
        if cached is None:
            spec_warnings: list[str] = []
            content = fetch_artifact_spec(repo, found.artifact, max_bytes=max_bytes, warnings=spec_warnings,
                                          manifest_body=found.manifest_body)
            text, created = content.text, content.created
            with self._lock:
                self._specs.put(spec_key, (text, tuple(spec_warnings), created))
        else:
            text, spec_warnings_t, created = cached
            spec_warnings = list(spec_warnings_t)
            size = len(text.encode("utf-8"))
            if size > max_bytes:
                raise InvalidArgumentError(
                    f"compatibility spec of {ref} is {size} bytes, over the {max_bytes}-byte limit"
                )
        warnings.extend(spec_warnings)
        return FetchedSpec(text, str(ref), found.image.digest, found.artifact.digest,
                           found.created or created, warnings)
