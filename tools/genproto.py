"""Generate the Python gRPC/protobuf stubs for protos/nodecompat/v1 into nodecompat/v1.

Why a script and not a bare protoc line: the drift test regenerates into a temporary directory and
compares byte for byte, so the exact same invocation must serve `make proto` and the test.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
OUT_PACKAGE = Path("nodecompat") / "v1"


def generate(out_root: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) and return the generated files under out_root/nodecompat/v1."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / OUT_PACKAGE).glob("*.proto"))
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    bindir = Path(sys.executable).parent
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    out = out_root / OUT_PACKAGE
    (out / "__init__.py").write_text('"""Generated protobuf/gRPC code for nodecompat.v1 (do not edit)."""\n')
    return sorted(p for p in out.iterdir() if p.is_file())


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
        dest = ROOT / OUT_PACKAGE
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for f in files:
            shutil.copy2(f, dest / f.name)
    print(f"generated {len(files)} files into {OUT_PACKAGE}")


if __name__ == "__main__":
    main()
