"""local probe: NFD's local.feature and local.label, from feature files in features.d.

Same file format and rules as NFD's source/local (hooks are gone upstream, so none here):
- every non-empty, non-comment line is `key[=value]`; the value defaults to "true";
- `# +no-feature` / `# +no-label` keep the NEXT key out of local.feature / local.label (and remove
  an earlier value of that key from the same file);
- `# +expiry-time=<RFC3339>` makes the following lines of that file count only until then;
  for the probe memo (probes/probe_memo.py) which of the files' expiry times have passed is an input
  asked again each round (noted_answer), so a result is reused until one passes (or the clock is set
  back over one), then the probe runs: the lines are dropped in the first round past the time, as NFD
  drops them at its first read past it (source/local/local.go, parseFeatureFile, expiry-time);
- an unknown or malformed directive is reported (file:line) and parsing goes on, as in NFD;
- dot-files, non-regular files and files over 64 KiB are ignored; later files (by name) win;
- the files read together are bounded (MAX_TOTAL_BYTES, 1 MiB): past it the probe fails and publishes nothing
  (FeatureFilesTooLarge), as past the listing bound (hostroot.MAX_LIST_ENTRIES), never a partial set. The listing
  bound alone let features.d hold 65,536 files of 64 KiB (4 GiB): 6.3 MB of files cost the daemon ~290 MB RSS and
  a 14 MB GetFeatures answer, over gRPC's 4 MiB receive limit (review9). NFD reads them unbounded.
This is also where NVIDIA GFD writes its labels (features.d/gfd), so GFD data is visible here.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime

from nodecompat.features import Features
from nodecompat.hostroot import HostPathEscape, HostRoot
from nodecompat.probes.base import FeatureInfo, Probe, ProbeOutput
from nodecompat.probes.probe_memo import noted_answer
from nodecompat.probes.textkept import TextKept

MAX_FILE_SIZE = 64 * 1024
MAX_TOTAL_BYTES = 1 << 20  # every feature file of one round together (real ones: a few, of < 1 KiB each)


class FeatureFilesTooLarge(Exception):
    """features.d's files together over MAX_TOTAL_BYTES: the probe fails (its status says so), publishing nothing.
    Not an OSError (probes read those as "absent")."""
DIRECTIVE_PREFIX = "# +"


@dataclass
class FeatureFile:
    """What one feature file declares."""

    features: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    expiries: list[datetime] = field(default_factory=list)  # every valid expiry-time of the file, in order


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})?$")


def _parse_rfc3339(value: str) -> datetime:
    """Go's time.RFC3339 layout (2006-01-02T15:04:05Z07:00); the zone offset is mandatory."""
    v = value.strip()
    m = _RFC3339.match(v)
    if not m:
        raise ValueError(f"not an RFC3339 time: {v!r}")
    if m.group(2) is None:
        raise ValueError(f"RFC3339 time without a zone offset: {v!r}")
    return datetime.fromisoformat(v.upper().replace("Z", "+00:00"))


def parse_feature_file(text: str, name: str = "<file>", now: datetime | None = None) -> FeatureFile:
    """Parse one features.d file (NFD's parseFeatureFile semantics)."""
    now = now or datetime.now(UTC)
    out = FeatureFile()
    expiry: datetime | None = None
    skip_feature = skip_label = False
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if line.startswith(DIRECTIVE_PREFIX):
                key, sep, value = line[len(DIRECTIVE_PREFIX) :].partition("=")
                if key == "expiry-time":
                    if not sep:
                        out.errors.append(f"{name}:{lineno}: expiry-time directive needs a value")
                        continue
                    try:
                        expiry = _parse_rfc3339(value)
                        out.expiries.append(expiry)
                    except ValueError as exc:
                        out.errors.append(f"{name}:{lineno}: bad expiry-time: {exc}")
                elif key == "no-feature":
                    skip_feature = True
                elif key == "no-label":
                    skip_label = True
                else:
                    out.errors.append(f"{name}:{lineno}: unknown feature file directive {key!r}")
            continue
        if expiry is not None and expiry < now:
            continue
        k, sep, v = line.partition("=")
        value = v if sep else "true"
        if skip_feature:
            out.features.pop(k, None)
        else:
            out.features[k] = value
        if skip_label:
            out.labels.pop(k, None)
        else:
            out.labels[k] = value
        skip_feature = skip_label = False
    return out


# (path, text) -> (its parse, which of its expiry times had passed then): a file's parse depends on its text,
# its name and, of the clock, only on which expiry times have passed (parse_feature_file's `expiry < now`), so
# it is made again when one of those answers differs; a file over 16 KiB is parsed every round, never kept
_PARSES: TextKept[tuple[FeatureFile, tuple[bool, ...]]] = TextKept(16, 16 << 10)  # real files: < 1 KiB


def _parse(path: str, text: str, now: datetime) -> FeatureFile:
    """parse_feature_file(text, path, now), reused for the same path and text while its expiry times answer
    the same at `now`. Shared: not to be changed."""
    key = (path, text)
    kept = _PARSES.peek(key)
    if kept is not None and (not kept[0].expiries or passed(tuple(kept[0].expiries), now) == kept[1]):
        return kept[0]
    parsed = parse_feature_file(text, path, now)
    _PARSES.put(key, (parsed, passed(tuple(parsed.expiries), now)))
    return parsed


class LocalProbe(Probe):
    name = "local"
    memoizable = True  # reads only its host, and the clock against its expiry times (an input asked again)
    features = (
        FeatureInfo(
            "local.feature",
            frozenset({"attribute"}),
            absent="empty (always published)",
            attributes=None,
            source="<features.d>/*",
            description="key=value lines of feature files",
        ),
        FeatureInfo(
            "local.label",
            frozenset({"attribute"}),
            absent="empty (always published)",
            attributes=None,
            source="<features.d>/*",
            description="the same, minus keys marked # +no-label",
        ),
    )

    def discover(self, host: HostRoot) -> ProbeOutput:
        now = datetime.now(UTC)  # one moment for every file, the one the memo's answer is computed at
        expiries: list[datetime] = []
        out = ProbeOutput(Features())
        features: dict[str, str] = {}
        labels: dict[str, str] = {}
        base = host.features_d.rstrip("/")
        total = 0  # bytes of feature files read (MAX_TOTAL_BYTES)
        if not host.is_dir(base):
            out.notes.append(f"feature file directory {base} does not exist")
        for name, path in host.iterdir(base):
            if name.startswith("."):
                continue
            try:  # an entry must stay inside features.d (a link to /etc/shadow is refused, said here)
                st = host.stat(path, within=base)
            except HostPathEscape as exc:
                out.notes.append(str(exc))
                continue
            except OSError as exc:
                out.notes.append(f"{path}: cannot stat: {exc.strerror}")
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            if st.st_size > MAX_FILE_SIZE:
                out.notes.append(f"{path}: ignored, {st.st_size} bytes > {MAX_FILE_SIZE}")
                continue
            if total + st.st_size > MAX_TOTAL_BYTES:
                raise FeatureFilesTooLarge(f"the feature files of {base} exceed {MAX_TOTAL_BYTES} bytes together "
                                           f"(at {path}): not read (the probe publishes nothing from them)")
            text = host.read_text(path, within=base)
            if text is None:
                out.notes.append(f"{path}: unreadable")
                continue
            total += len(text)  # as read (characters: a file that grew since its stat counts what was read)
            parsed = _parse(path, text, now)  # the same parse_feature_file gives (kept by text: _PARSES)
            expiries.extend(parsed.expiries)
            out.notes.extend(parsed.errors)
            features.update(parsed.features)
            labels.update(parsed.labels)
        out.features.add_attributes("local.feature", features)
        out.features.add_attributes("local.label", labels)
        if expiries:  # the result holds while these answer the same (a replay asks the clock again)
            times = tuple(expiries)
            noted_answer(host, passed, (times,), passed(times, now))
        return out


def passed(expiries: tuple[datetime, ...], now: datetime | None = None) -> tuple[bool, ...]:
    """For each expiry time, whether it has passed at `now` (default: the clock now), as
    parse_feature_file decides it (`expiry < now`): what local's result depends on besides the files."""
    at = now or datetime.now(UTC)
    return tuple(e < at for e in expiries)
