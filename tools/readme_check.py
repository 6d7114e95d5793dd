"""`make readme-check`: run README.md's recipes top to bottom in one fresh shell, as a newcomer would.

How recipes are marked (for everyone who adds one):
- Every fenced block whose info string is `sh` is a recipe; its lines run in order in ONE bash shell
  (variables, `cd`, `. .venv/bin/activate` carry over), each command checked. Other blocks (```text,
  ```console, ```yaml ...) are never run.
- A command exits 0 unless its trailing comment announces otherwise: `# exit 0|1: compatible or not`
  allows 0 and 1 (any `exit N|M...` in the comment). Its stderr must not hold a traceback or the word
  "error" unless the comment announces it too (say `error` in it).
- A command ending in `&` runs in the background as a human's would; its output goes to a log, and
  whatever it started is stopped when the check ends.
- `<!-- readme-check: skip REASON -->` on the line before a block: the block is not run (installing,
  the test suite itself, anything needing a backend or a cluster the check does not start).
- `<!-- readme-check: background ready=URL [log="TEXT"] -->` before a block: each of its commands is a
  server a human keeps running in a second terminal; the check starts it in the background and waits
  (60 s at most) until URL answers -- grpc://HOST:PORT (grpc.health.v1 SERVING) or http://HOST:PORT/PATH
  (any HTTP answer) -- and, with log=, until TEXT appears in its output.
Background logs must not hold a Python traceback or an ERROR log record at the end.

Isolation: as root (CI, the dev machines) the shell runs in a new network namespace with only loopback
up, so the README's fixed ports (50051, 5000, ...) never collide with anything else on the machine
(another helper's check, a developer's `make run`); elsewhere it runs on the host's loopback and needs
those ports free. TMPDIR points at a private directory; the environment is the caller's without
OTEL_*/VIRTUAL_ENV and without the venv on PATH (the README activates it). Afterwards `git status` must
show no new file: recipes must not leave anything in the tree.

Usage: python tools/readme_check.py [--readme README.md] [--no-netns] [--keep]
       python tools/readme_check.py --wait-ready URL [--log FILE --text TEXT]   (used by the shell)
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER_RE = re.compile(r"<!--\s*readme-check:\s*(?P<kind>skip|background)\b(?P<rest>.*?)-->")
FENCE_RE = re.compile(r"^```(?P<info>\S*)\s*$")
EXIT_RE = re.compile(r"\bexit ((?:\d\|)*\d):")
READY_TIMEOUT = 60.0


@dataclass
class Command:
    line: int  # 1-based line in the README
    text: str  # the shell text (continuations joined)
    allowed: tuple[int, ...] = (0,)
    error_announced: bool = False
    background: bool = False


@dataclass
class Block:
    line: int
    commands: list[Command] = field(default_factory=list)
    skip: str = ""
    ready: str = ""
    log_text: str = ""
    server: bool = False  # marked `background`


def _comment(text: str) -> str:
    """The trailing `# ...` comment of a shell line (a `#` after whitespace, outside quotes), or ""."""
    quote = ""
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
            elif ch == "\\" and quote == '"':
                continue
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[i:]
    return ""


def parse(readme: str) -> list[Block]:
    """The sh blocks of the README with their markers and commands."""
    lines = readme.splitlines()
    blocks: list[Block] = []
    pending: re.Match[str] | None = None
    i = 0
    while i < len(lines):
        m = MARKER_RE.search(lines[i])
        if m:
            pending = m
            i += 1
            continue
        fence = FENCE_RE.match(lines[i])
        if not fence:
            if lines[i].strip():
                pending = None  # a marker applies to the block right after it
            i += 1
            continue
        info, start = fence.group("info"), i
        body: list[tuple[int, str]] = []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append((i + 1, lines[i]))
            i += 1
        i += 1
        if info != "sh":
            pending = None
            continue
        block = Block(start + 1)
        if pending is not None:
            rest = pending.group("rest").strip()
            if pending.group("kind") == "skip":
                block.skip = rest or "marked skip"
            else:
                block.server = True
                if r := re.search(r"ready=(\S+)", rest):
                    block.ready = r.group(1)
                if t := re.search(r'log="([^"]*)"', rest):
                    block.log_text = t.group(1)
            pending = None
        text, first = "", 0
        for number, raw in body:
            if not text:
                first = number
            stripped = raw.rstrip()
            if stripped.endswith("\\"):
                text += stripped[:-1] + " "
                continue
            text += stripped
            if text.strip() and not text.lstrip().startswith("#"):
                block.commands.append(_command(first, text.strip(), block.server))
            text = ""
        blocks.append(block)
    return blocks


def _command(line: int, text: str, server: bool) -> Command:
    comment = _comment(text)
    cmd = Command(line, text)
    if m := EXIT_RE.search(comment):
        cmd.allowed = tuple(int(x) for x in m.group(1).split("|"))
    cmd.error_announced = "error" in comment.lower()
    body = text[: len(text) - len(comment)].rstrip() if comment else text
    cmd.background = server or body.endswith("&")
    return cmd


def script(blocks: list[Block], workdir: Path, tool: Path, python: str) -> str:
    """The bash script that runs every recipe in order, checking each command."""
    out = [
        "set -u -m",  # -m: each background job is its own process group, stopped as a whole at the end
        f"cd {shlex.quote(str(ROOT))}",
        f"__D={shlex.quote(str(workdir))}",
        "__BG=()",
        "__stop() { set +m; for p in ${__BG[@]+\"${__BG[@]}\"}; do kill -TERM -- -$p 2>/dev/null; done;"
        " for i in $(seq 50); do __alive=0; for p in ${__BG[@]+\"${__BG[@]}\"}; do"
        " kill -0 -- -$p 2>/dev/null && __alive=1; done; [ $__alive = 0 ] && break; sleep 0.2; done;"
        " for p in ${__BG[@]+\"${__BG[@]}\"}; do kill -KILL -- -$p 2>/dev/null; done; }",
        "trap __stop EXIT",
        "__fail() { echo \"readme-check: README.md:$1: $2\" >&2; exit 1; }",
    ]
    n = 0
    for block in blocks:
        if block.skip:
            out.append(f"echo '### README.md:{block.line}: skipped ({block.skip})'")
            continue
        for cmd in block.commands:
            n += 1
            shown = shlex.quote(f"$ {cmd.text}")
            out.append(f"echo {shown}")
            if cmd.background:
                body = cmd.text
                comment = _comment(body)
                if comment:
                    body = body[: len(body) - len(comment)].rstrip()
                body = body.removesuffix("&").rstrip()
                log = f"$__D/bg.{n}.log"
                out.append(f"{{ {body} ; }} >{log} 2>&1 &")
                out.append("__BG+=($!)")
                out.append(f"echo {cmd.line} {shlex.quote(cmd.text)} >> $__D/background")
                out.append(f"echo {log} >> $__D/background")
                if block.ready:
                    wait = [python, str(tool), "--wait-ready", block.ready, "--log", log]
                    if block.log_text:
                        wait += ["--text", block.log_text]
                    out.append(" ".join(shlex.quote(w) if not w.startswith("$__D") else w for w in wait)
                               + f" || __fail {cmd.line} 'not ready: {block.ready}'")
                continue
            out.append(f"{{ {cmd.text}\n}} >$__D/out.{n} 2>$__D/err.{n}")
            out.append("__rc=$?")
            out.append(f"sed 's/^/    /' $__D/out.{n} | head -n 40; sed 's/^/    stderr: /' $__D/err.{n} | head -n 40")
            allowed = " ".join(str(a) for a in cmd.allowed)
            out.append(f"case ' {allowed} ' in *\" $__rc \"*) ;; *) __fail {cmd.line} \"exit $__rc"
                       f" (the README announces {'|'.join(map(str, cmd.allowed))})\";; esac")
            pattern = "Traceback" if cmd.error_announced else "Traceback|[Ee]rror|ERROR"
            out.append(f"grep -qE '{pattern}' $__D/err.{n} && __fail {cmd.line} 'unannounced error on stderr'")
    out.append("echo '### every recipe ran'")
    out.append("exit 0")
    return "\n".join(out) + "\n"


def wait_ready(url: str, log: str | None, text: str | None, timeout: float = READY_TIMEOUT) -> int:
    """0 once `url` answers (and `text` is in `log`); 1 after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _answers(url) and (not text or (log and text in Path(log).read_text(errors="replace"))):
            return 0
        time.sleep(0.1)
    tail = Path(log).read_text(errors="replace")[-2000:] if log and Path(log).exists() else ""
    print(f"readme-check: {url} not ready after {timeout:g}s; its output:\n{tail}", file=sys.stderr)
    return 1


def _answers(url: str) -> bool:
    if url.startswith("grpc://"):
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(url.removeprefix("grpc://")) as ch:
            try:
                resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return False
            return resp.status == health_pb2.HealthCheckResponse.SERVING
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # it answers
    except OSError:
        return False


def _background_problems(workdir: Path) -> list[str]:
    listing = workdir / "background"
    if not listing.exists():
        return []
    problems = []
    entries = listing.read_text().splitlines()
    for what, log in zip(entries[::2], entries[1::2], strict=False):
        text = Path(log).read_text(errors="replace") if Path(log).exists() else ""
        if "Traceback (most recent call last)" in text or re.search(r"^\S+ \S+ ERROR ", text, re.M):
            problems.append(f"README.md:{what}: its output holds an error:\n{text[-3000:]}")
    return problems


def _untracked() -> set[str]:
    if not (ROOT / ".git").exists():
        return set()
    r = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                       capture_output=True, text=True, check=False)
    return set(r.stdout.splitlines())


def _environment(tmp: Path) -> dict[str, str]:
    venv_bin = str(ROOT / ".venv" / "bin")
    dropped = ("VIRTUAL_ENV", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "PYTEST_", "_ARGCOMPLETE", "COMP_")) and k not in dropped}
    path = env.get("PATH", "/usr/bin:/bin").split(os.pathsep)
    env["PATH"] = os.pathsep.join(p for p in path if p != venv_bin)
    env["TMPDIR"] = str(tmp)
    return env


def _can_unshare() -> bool:
    """Whether this process may make a network namespace (root, util-linux's unshare, iproute2's ip)."""
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("ip")):
        return False
    probe = subprocess.run(["unshare", "--net", "ip", "link", "set", "lo", "up"], capture_output=True, check=False)
    return probe.returncode == 0


def run(readme: Path, netns: bool, keep: bool) -> int:
    blocks = parse(readme.read_text())
    if not any(b.commands and not b.skip for b in blocks):
        print("readme-check: no runnable ```sh block in the README", file=sys.stderr)
        return 1
    before = _untracked()
    workdir = Path(tempfile.mkdtemp(prefix="nodecompat-readme-check-"))
    tmp = workdir / "tmp"
    tmp.mkdir()
    try:
        text = script(blocks, workdir, Path(__file__).resolve(), sys.executable)
        (workdir / "recipes.sh").write_text(text)
        shell = ["bash", "--noprofile", "--norc", str(workdir / "recipes.sh")]
        if netns and _can_unshare():
            shell = ["unshare", "--net", "bash", "--noprofile", "--norc", "-c",
                     f"ip link set lo up && exec bash --noprofile --norc {shlex.quote(str(workdir / 'recipes.sh'))}"]
        proc = subprocess.run(shell, env=_environment(tmp), stdin=subprocess.DEVNULL, timeout=600, check=False)
        problems = [] if proc.returncode == 0 else [f"the recipes stopped (exit {proc.returncode})"]
        problems += _background_problems(workdir)
        left = sorted(_untracked() - before)
        if left:
            problems.append("the recipes left files in the repository: " + ", ".join(left))
        for p in problems:
            print(f"readme-check: {p}", file=sys.stderr)
        return 1 if problems else 0
    finally:
        if keep:
            print(f"readme-check: kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--no-netns", action="store_true", help="run on the host's loopback (the ports must be free)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (script, outputs, logs)")
    ap.add_argument("--wait-ready", metavar="URL", help=argparse.SUPPRESS)
    ap.add_argument("--log", help=argparse.SUPPRESS)
    ap.add_argument("--text", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.wait_ready:
        return wait_ready(args.wait_ready, args.log, args.text)
    return run(args.readme, not args.no_netns, args.keep)


if __name__ == "__main__":
    sys.exit(main())
