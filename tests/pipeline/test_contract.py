"""The stage contract (stages/base.py, pipeline/plan.py): what each stage reads and writes is declared,
`needs` follows from it, the design's stage names are accepted, and the README's table of where
each column is born says what the stages declare."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from manifests import TABLES
from pipeline.plan import STAGES, build_stages, load_config, needs, stage_class
from stages.base import StageContext

README = Path(__file__).resolve().parents[2] / "README.md"
# The README rows of writers that are not stages, and the one table each writes.
NOT_STAGES = {"every stage": ("pipeline/ledger.py", "stage_runs"), "export": ("pipeline/export.py", "splits")}


def readme_stage_table() -> dict[str, tuple[str, set[str]]]:
    """stage -> (code path, tables named in its `writes` cell), from the README's column table."""
    text = README.read_text()
    start = text.index("| stage | code | writes | columns in |")
    rows = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        stage, code, writes, _ = [c.strip() for c in line.strip("|").split("|")]
        rows[stage] = (code.strip("`"), {t for t in re.findall(r"`([a-z_]+)`", writes) if t in TABLES})
    return rows


def test_the_readme_says_what_each_stage_declares_it_writes():
    rows = readme_stage_table()
    for name in STAGES:
        cls = stage_class(name)
        entry = [v for k, v in rows.items() if k not in NOT_STAGES and stage_class(k) is cls]
        assert len(entry) == 1, f"{name}: {len(entry)} README rows"
        code, writes = entry[0]
        assert code == f"{cls.__module__.replace('.', '/')}.py" and writes == set(cls.writes), (name, entry, cls.writes)
    for name, (code, table) in NOT_STAGES.items():
        assert rows[name] == (code, {table}), name
    written = {t for n in STAGES for t in stage_class(n).writes}
    others = {t for _, t in NOT_STAGES.values()}
    assert not written & others and written | others == set(TABLES), "a table with no writer, two, or an unknown one"


def test_every_table_has_one_writer_and_every_read_has_one():
    writers = {}
    for n in STAGES:
        for t in stage_class(n).writes:
            assert t not in writers, f"{t} written by {writers[t]} and {n}"
            writers[t] = n
    for n in STAGES:
        cls = stage_class(n)
        for t in cls.reads + cls.uses:
            assert t in writers and list(STAGES).index(writers[t]) < list(STAGES).index(n), (n, t)


def test_needs_follow_from_what_a_stage_cannot_do_without():
    assert {n: needs(stage_class(n)) for n in STAGES} == {
        "download": (), "shots": ("download",), "faces": ("download",), "diarize": ("download",),
        "quality": ("download", "faces")}


def test_the_design_names_are_accepted(tmp_path):
    stages = build_stages(["download", "shot-detect", "face-crop", "speaker-diarize", "quality-filter"])
    assert [s.name for s in stages] == list(STAGES)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("shot-detect: {min_shot_s: 2.0}\nquality-filter: {min_clip_s: 2.0}\n")
    config = load_config(cfg)
    assert config == {"shots": {"min_shot_s": 2.0}, "quality": {"min_clip_s": 2.0}}
    with pytest.raises(ValueError, match="shot-detect"):  # the error lists both names
        build_stages(["shot-detection"])


def test_a_stage_reading_a_table_it_did_not_declare_is_stopped(tmp_path):
    ctx = StageContext(out=tmp_path, readable=frozenset(stage_class("faces").reads + stage_class("faces").uses))
    assert ctx.upstream("shots", "x").num_rows == 0
    with pytest.raises(KeyError, match="segments"):
        ctx.upstream("segments", "x")


def test_settings_out_of_the_config_hash_are_declared_and_only_those_are_out():
    """A stage's config hash covers every setting except those it declares `unhashed` (speed, paths to
    weights): changing one of those redoes nothing; changing any other setting redoes the stage."""
    for name in STAGES:
        stage = build_stages([name], {})[0]
        settings = {k for k in vars(stage) if not k.startswith("_")}
        assert set(stage.unhashed) <= settings, (name, stage.unhashed)
        assert set(stage.config()) == settings - set(stage.unhashed), name
    shots = build_stages(["shots"], {})[0]
    assert build_stages(["shots"], {"shots": {"decode_threads": 7}})[0].config_hash() == shots.config_hash()
    assert build_stages(["shots"], {"shots": {"min_shot_s": 0.9}})[0].config_hash() != shots.config_hash()
