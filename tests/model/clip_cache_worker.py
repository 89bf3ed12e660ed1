"""A DataLoader-like worker for tests/model/test_remote.py, in a module of its own so that a spawned
process imports only this (and model/remote.py), not torch and the trainer."""

from __future__ import annotations

from model.remote import ClipFiles

BLOB = 64 << 10


def blob(name: str) -> bytes:
    """The bytes of the test object `name` (distinct per name, BLOB bytes long)."""
    return (name.encode() * BLOB)[:BLOB]


def fetch_in_lockstep(uri: str, names: list[str], budget: int, barrier) -> None:
    """Fetch these files through one shared cache folder, one round at a time, in step with the others."""
    files = ClipFiles(uri, max_bytes=budget)
    for name in names:
        assert files.local(name).read_bytes() == blob(name)
        barrier.wait(300)
