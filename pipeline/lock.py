"""OUT/emo.lock: what each step of `emo build` consumed and produced, so a rebuild redoes only what changed.

    {"format": "emo-forge/lock/1", "build_file": ..., "updated": ..., "versions": {...},
     "steps": {"curate": {"key": ..., "inputs": {...}, "outputs": {...}, "versions": {...},
                          "finished_at": ..., "seconds": ...},
               "export": ..., "train/stage1": ..., "sample/hanks-speech": ...}}

A step's key is the hash of its inputs (sources' content, its settings, the outputs of the steps
before it). JSON, sorted keys, written atomically: a crash leaves the previous lock whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from manifests.hashing import sha256_file

LOCK_NAME = "emo.lock"
FORMAT = "emo-forge/lock/1"
KEY_PACKAGES = ("torch", "ray", "diffusers", "transformers", "accelerate", "pyarrow", "numpy", "mediapipe",
                "pyannote.audio", "av", "decord", "safetensors")


def digest(obj: Any) -> str:
    """sha256 of an object's canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _git_commit(root: Path) -> str | None:
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def versions() -> dict[str, str | None]:
    """emo-forge (package version and git commit) and the key dependencies, as installed now."""
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in ("emo-forge", *KEY_PACKAGES):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["emo-forge-commit"] = _git_commit(Path(__file__).resolve().parents[1])
    return out


class FileHashes:
    """sha256 of files, cached by (size, mtime) in OUT/build/file_hashes.json: a rebuild re-reads nothing unchanged."""

    def __init__(self, path: Path):
        self.path = path
        self.cache: dict[str, list] = json.loads(path.read_text()) if path.is_file() else {}
        self._changed = False

    def __call__(self, file: str | Path) -> str:
        file = Path(file).resolve()
        st = file.stat()
        hit = self.cache.get(str(file))
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        digest = sha256_file(file)
        self.cache[str(file)] = [st.st_size, st.st_mtime_ns, digest]
        self._changed = True
        return digest

    def save(self) -> None:
        if self._changed:
            _write_atomic(self.path, json.dumps(self.cache, indent=1, sort_keys=True))
            self._changed = False


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class Lock:
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    build_file: str | None = None

    @classmethod
    def load(cls, out: str | Path) -> Lock:
        path = Path(out) / LOCK_NAME
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: not an {FORMAT} file")
        return cls(steps=data["steps"], build_file=data.get("build_file"))

    def save(self, out: str | Path) -> Path:
        path = Path(out) / LOCK_NAME
        doc = {"format": FORMAT, "build_file": self.build_file, "updated": datetime.now(UTC).isoformat(),
               "versions": versions(), "steps": self.steps}
        _write_atomic(path, json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
        return path


def record(inputs: dict, outputs: dict, seconds: float) -> dict[str, Any]:
    """One step's lock entry."""
    return {"key": digest(inputs), "inputs": inputs, "outputs": outputs, "versions": versions(),
            "finished_at": datetime.now(UTC).isoformat(), "seconds": round(seconds, 3)}


def _short(v: Any) -> str:
    s = json.dumps(v, sort_keys=True, default=str) if not isinstance(v, str) else v
    return s[:12] if len(s) == 64 and all(c in "0123456789abcdef" for c in s) else (s if len(s) <= 60 else s[:57] + "...")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict) or not d:
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = k if k.isidentifier() else f"[{k}]"
        out.update(_flat(v, f"{prefix}.{name}" if prefix and k.isidentifier() else f"{prefix}{name}"))
    return out


def changes(old: dict, new: dict, limit: int = 4) -> list[str]:
    """What differs between two inputs dicts, in words: 'sources[/a/b.mp4] added', 'steps: 3 -> 5'."""
    a, b = _flat(old), _flat(new)
    out = []
    for k in sorted(set(a) | set(b)):
        if k not in a:
            out.append(f"{k} added")
        elif k not in b:
            out.append(f"{k} removed")
        elif a[k] != b[k]:
            out.append(f"{k}: {_short(a[k])} -> {_short(b[k])}")
    return out[:limit] + ([f"and {len(out) - limit} more"] if len(out) > limit else [])
