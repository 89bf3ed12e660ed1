"""`emo audit`: a report a person can read, a re-hash of every file, and the lineage of one clip."""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

from manifests.hashing import sha256_file
from manifests.lineage import checkpoints_of
from manifests.redact import redact_uri
from manifests.splits import TRAINING_TABLES, all_rejections, exported_clips
from manifests.store import ManifestStore


def verify(out: str | Path) -> list[str]:
    """Every file the manifests name, re-hashed: a list of problems (empty when all is well)."""
    store = ManifestStore(out)
    problems = []
    seen: set[str] = set()
    for r in store.read("sources").to_pylist():
        if r["status"] != "ok" or r["media_path"] in seen:
            continue
        seen.add(r["media_path"])
        p = store.out / r["media_path"]
        if not p.is_file():
            problems.append(f"missing: {r['media_path']} (source {r['source_id']}, {redact_uri(r['uri'])})")
        elif sha256_file(p) != r["sha256"]:
            problems.append(f"changed: {r['media_path']} (source {r['source_id']}): sha256 differs from the manifest")
    for c in store.read("clips").to_pylist():
        p = store.out / c["crop_path"]
        if not p.is_file():
            problems.append(f"missing: {c['crop_path']} (clip {c['clip_id']})")
        elif c["sha256"] and sha256_file(p) != c["sha256"]:
            problems.append(f"changed: {c['crop_path']} (clip {c['clip_id']}): sha256 differs from the manifest")
        if not (store.out / c["audio_path"]).is_file():
            problems.append(f"missing: {c['audio_path']} (clip {c['clip_id']})")
    return problems


def trace(out: str | Path, clip_id: str) -> dict[str, Any]:
    """The full lineage of one clip (or rejected candidate): source, shot, track, segment, every rule."""
    store = ManifestStore(out)
    clip = next((c for c in exported_clips(store) if c["clip_id"] == clip_id), None)  # not a near-duplicate
    rejected = [r for r in all_rejections(store) if r["candidate_id"] == clip_id]
    if clip is None and not rejected:
        raise KeyError(f"no clip or candidate {clip_id!r} in {store.root}")
    base = clip or rejected[0]
    judged = clip or next((c for c in store.read_shard("clips", base["source_id"]).to_pylist() if c["clip_id"] == clip_id), {})
    sid = base["source_id"]

    def one(table: str, key: str, value: str | None) -> dict | None:
        if value is None:
            return None
        return next((r for r in store.read_shard(table, sid).to_pylist() if r[key] == value), None)

    track = one("tracks", "track_id", base["track_id"])
    if track:
        track = {k: v for k, v in track.items() if k in ("track_id", "start_frame", "end_frame", "face_size_px",
                                                          "det_confidence", "blur", "exposure", "crop_path",
                                                          "identity_id", "backend")}
    return {
        "clip": {k: v for k, v in (clip or {}).items() if k not in ("head_speed", "rules")} or None,
        "kept": clip is not None,
        "sources": [_redacted({k: r[k] for k in ("uri", "final_url", "redirects", "sha256", "license", "consent",
                                                  "fetched_at", "category", "title", "media_path")})
                    for r in store.read("sources").to_pylist() if r["source_id"] == sid],
        "shot": one("shots", "shot_id", base["shot_id"]),
        "track": track,
        "segment": one("segments", "segment_id", base["segment_id"]),
        "rules": base.get("rules") or judged.get("rules") or [],  # every rule the candidate was judged by, with its value
        "failed_rules": [{"rule": r["rule"], "value": r["value"], "threshold": r["threshold"]} for r in rejected],
    }


def build_lineage(out: str | Path) -> list[str]:
    """From OUT/emo.lock (`emo build`): the dataset each checkpoint was trained on, the checkpoint of each video."""
    path = Path(out) / "emo.lock"
    if not path.is_file():
        return []
    steps = json.loads(path.read_text())["steps"]
    export = steps.get("export", {}).get("outputs", {})
    ckpts = {s["outputs"]["model_sha256"]: s["outputs"]["checkpoint"] for n, s in steps.items() if n.startswith("train/")}
    lines = []
    for name in sorted(steps, key=lambda n: (not n.startswith("train/"), n)):  # checkpoints, then videos
        o = steps[name]["outputs"]
        if name.startswith("train/"):
            dataset = (f"dataset {export['manifest_hash'][:12]} (export/dataset_card.json)"
                       if o["manifest_hash"] == export.get("clips_hash") else "a dataset this OUT no longer holds")
            parent = o.get("parent") or {}
            origin = ckpts.get(parent.get("model_sha256"), parent.get("path"))
            lines.append(f"checkpoint {o['checkpoint']} ({o['model_sha256'][:12]}) was trained on {dataset}, "
                         f"clips hash {o['manifest_hash'][:12]}"
                         + (f"; {'fine-tuned' if o.get('finetune') else 'continued'} from {origin}" if origin else ""))
        elif name.startswith("sample/"):
            lines.append(f"video {o['video']} ({o['sha256'][:12]}) was generated by checkpoint "
                         f"{ckpts.get(o['checkpoint_sha256'], o['checkpoint'])} ({o['checkpoint_sha256'][:12]})")
    return lines


def _plot(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _hist(values: list[float], title: str, xlabel: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3))
    vals = [v for v in values if v is not None]
    if vals:
        ax.hist(vals, bins=20, color="#3b7dd8", alpha=0.85)
    else:
        _nothing(ax)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    return _plot(fig)


def _nothing(ax) -> None:
    """An empty chart says so, instead of drawing made-up axes around no data."""
    ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes, color="#888")
    ax.set_xticks([])
    ax.set_yticks([])


def _bars(counter: dict[str, float], title: str, xlabel: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sorted(counter.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(4.6, 0.4 + 0.32 * max(1, len(items))))
    if items:
        ax.barh([k for k, _ in items], [v for _, v in items], color="#e07b39")
    else:
        _nothing(ax)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    return _plot(fig)


def _rejection_rows(rej: list[dict]) -> str:
    by_rule: dict[str, list[dict]] = {}
    for r in rej:
        by_rule.setdefault(r["rule"], []).append(r)
    rows = []
    for rule, rs in sorted(by_rule.items(), key=lambda kv: -len(kv[1])):
        values = sorted(r["value"] for r in rs if r["value"] is not None)
        median = f"{values[len(values) // 2]:.3g}" if values else "-"
        threshold = rs[0]["threshold"]
        rows.append(f"<tr><td>{html.escape(rule)}</td><td>{len(rs)}</td>"
                    f"<td>{'-' if threshold is None else f'{threshold:.3g}'}</td><td>{median}</td></tr>")
    return "".join(rows)


def _model_warning(m: dict[str, Any]) -> str:
    if m["opted_out"]:
        return (f'<b style="color:#b00">learned from {len(m["opted_out"])} opted-out source(s): '
                f'{html.escape(", ".join(m["opted_out"]))}; retrain or delete it</b>')
    return "no record of what an ancestor learned from" if m["unrecorded_ancestors"] else ""


def vocal_minutes(store: ManifestStore, clips: list[dict]) -> tuple[Counter, Counter]:
    """Minutes of audio heard (all segments) and of kept clips, by vocal type (stages/diarize/vocal.py):
    what a singing corpus is built from, and what of it survived curation."""
    heard, kept = Counter(), Counter()
    for seg in store.read("segments", columns=["vocal_type", "start_s", "end_s"]).to_pylist():
        heard[seg["vocal_type"] or "unknown"] += (seg["end_s"] - seg["start_s"]) / 60
    for c in clips:
        kept[c["vocal_type"] or "unknown"] += (c["end_s"] - c["start_s"]) / 60
    return heard, kept


def report(out: str | Path) -> Path:
    """Write OUT/audit/report.html: self-contained (images inlined), opens with no server."""
    store = ManifestStore(out)
    clips = exported_clips(store)
    rej = all_rejections(store)
    tracks = store.read("tracks", columns=["face_size_px", "yaw", "pitch"]).to_pylist()
    sources = store.read("sources").to_pylist()
    minutes_license, minutes_cat = Counter(), Counter()
    for c in clips:
        minutes_license[c["license"] or "unknown"] += (c["end_s"] - c["start_s"]) / 60
        minutes_cat[c["category"] or "unknown"] += (c["end_s"] - c["start_s"]) / 60
    status = Counter(f"{r['status']}: {(r['error'] or '').split(':')[0]}".rstrip(": ") for r in sources)
    heard, kept_by_type = vocal_minutes(store, clips)
    yaws = [abs(y) for t in tracks for y in (t["yaw"] or []) if y is not None]
    figures = [
        _bars(dict(status), "Sources by outcome", "sources"),
        _hist([c["end_s"] - c["start_s"] for c in clips], "Clip durations", "seconds"),
        _hist([t["face_size_px"] for t in tracks], "Face sizes (tracks)", "pixels"),
        _hist([c["sync_confidence"] for c in clips], "Sync confidence (kept clips)", "confidence"),
        _hist(yaws, "Head yaw (all tracked frames)", "|yaw| degrees"),
        _bars(dict(Counter(r["rule"] for r in rej)), "Rejections by rule", "failed candidates"),
        _bars(dict(minutes_license), "Minutes by license", "minutes"),
        _bars(dict(minutes_cat), "Minutes by category", "minutes"),
        _bars(dict(heard), "Audio heard, by vocal type", "minutes"),
        _bars(dict(kept_by_type), "Kept clips, by vocal type", "minutes"),
    ]
    card_path = Path(out) / "export" / "dataset_card.json"
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    lineage = "".join(f"<li>{html.escape(line)}</li>" for line in build_lineage(out))
    models = "".join(
        f"<tr><td>{html.escape(m['checkpoint'])}</td><td>{m['stage']}</td><td>{m['step']}</td><td>{m['sources']}</td>"
        f"<td>{m['seconds']}</td><td>{_model_warning(m)}</td></tr>" for m in checkpoints_of(out))
    source_fps = {r["source_id"]: r["fps"] for r in store.read("timeline", columns=["source_id", "fps"]).to_pylist()}
    moved = [c for c in clips if c.get("audio_shift_frames")]
    rows = "".join(f"<tr><td>{html.escape(c['clip_id'])}</td><td>{html.escape(c['license'] or 'unknown')}</td>"
                   f"<td>{html.escape(c['consent'] or 'unknown')}</td><td>{c['end_s'] - c['start_s']:.1f}</td>"
                   f"<td>{_sync_cell(c['sync_confidence'])}</td><td>{_moved_cell(c, source_fps.get(c['source_id']))}</td>"
                   f"<td>{html.escape(c['split'] or 'not exported')}</td></tr>" for c in clips[:200])
    body = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>emo-forge audit</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;color:#222}} .grid{{display:flex;flex-wrap:wrap;gap:12px}}
.card{{border:1px solid #ddd;border-radius:8px;padding:8px;background:#fafafa}} td,th{{padding:2px 10px;text-align:left}}
.kpi{{display:inline-block;margin-right:28px}} .kpi b{{font-size:1.6em;display:block}}</style></head><body>
<h1>emo-forge audit</h1>
<p>{html.escape(str(Path(out).resolve()))} &middot; manifest hash <code>{html.escape(card.get('manifest_hash', store.content_hash(['sources', *TRAINING_TABLES])))}</code></p>
<div><span class="kpi"><b>{len(sources)}</b>sources</span><span class="kpi"><b>{len(clips)}</b>clips kept</span>
<span class="kpi"><b>{sum(c['end_s'] - c['start_s'] for c in clips) / 60:.1f}</b>minutes</span>
<span class="kpi"><b>{len({r['candidate_id'] for r in rej})}</b>candidates rejected</span>
<span class="kpi"><b>{len(moved)}</b>clips with their sound moved into step</span></div>
<div class="grid">{''.join(f'<div class="card"><img src="{f}"></div>' for f in figures)}</div>
<h2>Rejections by rule</h2><table><tr><th>rule</th><th>failed candidates</th><th>threshold</th><th>median measured</th></tr>{_rejection_rows(rej)}</table>
{f'<h2>Build lineage (emo.lock)</h2><ul>{lineage}</ul>' if lineage else ''}
{f'<h2>Checkpoints under this folder</h2><p>What each learned from, parents included (its meta.json).</p><table><tr><th>checkpoint</th><th>stage</th><th>step</th><th>sources</th><th>clip seconds</th><th>warning</th></tr>{models}</table>' if models else ''}
<h2>Kept clips</h2><p>sync: the face's sync confidence on the clip, in null standard deviations; sound moved: how far
the clip's wav was moved into step with the face (a source whose audio is late or early as published), in frames of the
source and milliseconds.</p>
<table><tr><th>clip</th><th>license</th><th>consent</th><th>seconds</th><th>sync</th><th>sound moved</th><th>split</th></tr>{rows}</table>
</body></html>"""
    dest = Path(out) / "audit" / "report.html"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(body, encoding="utf-8")
    return dest


def _sync_cell(confidence: float | None) -> str:
    return "not measured" if confidence is None else f"{confidence:.1f}"


def _moved_cell(clip: dict[str, Any], fps: float | None) -> str:
    """'5 frames (200 ms), the source's sound late' for a clip whose wav was moved into step (taken
    from 5 frames further on in the source), '' for one taken in place."""
    k = clip.get("audio_shift_frames") or 0
    if not k:
        return ""
    ms = f" ({1000 * abs(k) / fps:.0f} ms)" if fps else ""
    return f"{abs(k)} frames{ms}, the source's sound {'late' if k > 0 else 'early'}"


def _redacted(src: dict[str, Any]) -> dict[str, Any]:
    """A sources row with its URIs redacted (OUTs written before redaction hold them in full)."""
    return {**src, "uri": redact_uri(src["uri"]), "final_url": redact_uri(src["final_url"]),
            "redirects": [redact_uri(u) for u in src["redirects"] or []]}
