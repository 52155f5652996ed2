"""Builds the Python stubs for the contracts in protos/ (never edit the generated files).

The .proto files live at ``protos/voiceai/<service>/v1/*.proto``; their generated modules land in
``voiceai/<service>/v1/`` so that they import as ``voiceai.asr.v1.asr_pb2``. A stamp file records
the hash of the sources so that a stale build is detected and rebuilt.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
OUT_ROOT = REPO_ROOT
STAMP = REPO_ROOT / "voiceai" / ".protos.sha256"


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    """All contract files, sorted for a stable hash."""
    return sorted(root.glob("voiceai/**/*.proto"))


def sources_digest(root: Path = PROTO_ROOT) -> str:
    """sha256 over the paths and bytes of every .proto file."""
    digest = hashlib.sha256()
    for path in proto_files(root):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def is_current() -> bool:
    """True when the generated stubs match the .proto sources."""
    return STAMP.exists() and STAMP.read_text().strip() == sources_digest()


def generate(force: bool = False) -> list[Path]:
    """Runs protoc (from grpcio-tools) over every contract; returns the generated packages."""
    if not force and is_current():
        return []
    from grpc_tools import protoc  # build-time dependency

    files = proto_files()
    if not files:
        raise RuntimeError(f"no .proto files under {PROTO_ROOT}")
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={OUT_ROOT}",
        f"--pyi_out={OUT_ROOT}",
        f"--grpc_python_out={OUT_ROOT}",
        *(str(f) for f in files),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed; see the messages above")
    packages = sorted({(OUT_ROOT / f.relative_to(PROTO_ROOT)).parent for f in files})
    for package in packages:
        # Every folder on the way down must be a package for `import voiceai.asr.v1`.
        for folder in (package, package.parent):
            init = folder / "__init__.py"
            if not init.exists():
                init.write_text('"""Generated from protos/; do not edit."""\n')
    STAMP.write_text(sources_digest() + "\n")
    return packages


def main() -> int:
    generated = generate(force="--force" in sys.argv)
    for package in generated:
        print(f"generated {package.relative_to(REPO_ROOT)}")
    if not generated:
        print("stubs are current")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
