"""The media clock (stages/media/clock.py): in every container the flash frame and the tone burst
of tests/fixtures/clock_corpus.py coincide in the extracted wav, and the wav covers the video's span."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from stages.media.probe import decode_audio
from tests.fixtures.clock_corpus import TONE_HZ, build, variants

SR = 16000
ONE_FRAME_50FPS = 0.020


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return build(tmp_path_factory.mktemp("clock"))


def flash_times(path: Path) -> tuple[np.ndarray, float]:
    """Clock times of the flash frames (by each frame's PTS) and the end of the video."""
    ts, lum = [], []
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        for f in c.decode(vs):
            ts.append(float(f.pts * vs.time_base))
            lum.append(f.to_ndarray(format="gray").mean())
    ts, lum = np.asarray(ts) - ts[0], np.asarray(lum)
    return ts[lum - np.median(lum) > 35], float(ts[-1] + np.median(np.diff(ts[-5:])))


def tone_onsets(wav: np.ndarray) -> list[float]:
    """Where the 1 kHz burst starts: 50% of its peak energy in a 25 ms window, centre-referenced."""
    n, hop = 400, 40
    ref = np.exp(-2j * np.pi * TONE_HZ * np.arange(n) / SR) * np.hanning(n)
    e = np.abs(np.lib.stride_tricks.sliding_window_view(wav, n)[::hop] @ ref)
    thr, on = 0.5 * e.max(), []
    for i in np.flatnonzero((e[1:] >= thr) & (e[:-1] < thr)) + 1:
        t = (i * hop + n / 2) / SR
        if not on or t - on[-1] > 0.5:
            on.append(t)
    return on


@pytest.mark.parametrize("name", sorted(variants()))
def test_tone_and_flash_coincide_on_the_clock(corpus, name):
    wav, _ = decode_audio(corpus[name], SR, on_clock=True)
    flashes, end = flash_times(corpus[name])
    onsets = tone_onsets(wav)
    assert len(flashes) == len(onsets) == 2, (flashes, onsets)
    lag = np.asarray(onsets) - flashes
    assert np.all(np.abs(lag) < ONE_FRAME_50FPS), f"{name}: sound minus picture {np.round(lag * 1000)} ms"
    assert abs(len(wav) / SR - end) < 0.041, f"{name}: wav {len(wav) / SR:.3f} s for a {end:.3f} s video"


def test_audio_that_starts_late_is_silence_before(corpus):
    from tests.fixtures.clock_corpus import AUDIO_LATE_S

    wav, _ = decode_audio(corpus["audio_late.mp4"], SR, on_clock=True)
    head = wav[: int((AUDIO_LATE_S - 0.05) * SR)]
    assert np.abs(head).max() == 0.0 and np.abs(wav[int(AUDIO_LATE_S * SR):]).max() > 0.1


def test_sound_alone_starts_at_its_first_sample(corpus, tmp_path):
    """Without on_clock (emo sample's speech input) the audio is its own clock: nothing is padded."""
    wav, _ = decode_audio(corpus["audio_late.mp4"], SR)
    assert np.abs(wav[: SR // 10]).max() > 0.0


@pytest.mark.parametrize("name", ["video_late.mp4", "mp4_aac.mp4", "matroska.mkv", "broadcast.ts"])
def test_frame_times_start_at_zero_and_seek_anchors_use_them(corpus, name):
    """Shots' times (decode_small) are on the clock, and a seek to a shot start given in clock seconds
    lands on that very frame (quality's crop writer seeks by them). MPEG-TS included: FFmpeg seeks it
    by byte position and lands past the frame asked for; the seek is retried from further back
    (it raised AnchorNotFound, and every crop segment of a TS file decoded from the start)."""
    from stages.media.decode import decode_small
    from stages.media.video_io import iter_frames

    small = decode_small(corpus[name], (16, 9))
    assert small.pts[0] == 0.0 and abs(small.end_s - 6.0) < 0.05, (small.pts[:3], small.end_s)
    k = 100
    first_index, first_frame = next(iter_frames(corpus[name], 0, anchor=(k, float(small.pts[k]))))
    seeked = first_frame.to_ndarray(format="gray").astype(float)
    for i, frame in iter_frames(corpus[name], 0):
        if i == k:
            assert first_index == k and np.abs(frame.to_ndarray(format="gray") - seeked).mean() < 1.0
            break


def test_a_live_webm_without_duration_gets_one_by_a_demux_pass(corpus):
    """The per-media time allowance of every stage is computed from duration_s: it must not be None."""
    from stages.media.probe import probe_media

    meta = probe_media(corpus["live.webm"])
    assert meta["duration_s"] == pytest.approx(6.0, abs=0.05) and meta["n_frames"] == 150


@pytest.mark.parametrize("rate", [Fraction(30), Fraction(30000, 1001)])
def test_the_nominal_rate_of_a_file_with_millisecond_timestamps_is_its_own(tmp_path, rate):
    """Matroska keeps times in whole milliseconds: 1/30 s steps are written 33 or 34 ms. The nominal
    rate is still 30 (29.97), not one over whichever rounding the median step happens to be (30.30 or
    29.41): quality writes a constant-rate source's clips at that rate, and a lag in frames is
    turned into seconds with it."""
    from stages.media.clock import Timeline
    from stages.media.decode import decode_small

    path = tmp_path / "ms.mkv"
    with av.open(str(path), "w") as oc:
        vs = oc.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = 64, 64, "yuv420p"
        for i in range(90):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, 1 / rate
            oc.mux(vs.encode(frame))
        oc.mux(vs.encode(None))
    steps = np.round(np.diff(Timeline.from_demux(path).frame_s) * 1000)
    assert set(steps) == {33.0, 34.0}, steps  # the file is what the test is about
    for tl in (Timeline.from_demux(path), decode_small(path, (16, 16)).timeline()):
        assert tl.constant_rate and tl.fps == pytest.approx(float(rate), abs=0.01), tl.fps


def test_the_nominal_rate_of_a_source_half_at_one_rate_half_at_another_is_its_median_step():
    """No step is near the median (half 20 ms, half 40 ms): the median step, as before, never a mean of nothing."""
    from stages.media.clock import Timeline

    tl = Timeline(np.r_[np.arange(100) * 0.02, 2.0 + np.arange(100) * 0.04], 6.0)
    assert tl.fps == pytest.approx(1 / 0.03) and not tl.constant_rate


def test_the_nominal_rate_of_equal_steps_is_one_over_the_step_as_before():
    """Frame times of a 25 fps mp4 (pts of 512 in 1/12800): the rate is one over the step, exactly as
    the median rule gave. A mean summing 749 of them would move it in the last digits, and the rate
    is written into every clip row (the demo's manifests would change for nothing)."""
    from stages.media.clock import Timeline

    tl = Timeline(np.array([float(Fraction(512 * i, 12800)) for i in range(750)]), 30.0)
    assert tl.fps == 1.0 / float(np.median(tl.steps[tl.steps > 0]))


def test_a_seek_into_mpegts_starts_near_its_anchor_not_at_the_file_start(tmp_path, monkeypatch):
    """FFmpeg seeks MPEG-TS by byte position and lands past the keyframe asked for; the crop writer
    then decoded every segment of a long broadcast recording from the file's start. The seek is
    retried from further back, so reaching frame 1000 of 1200 decodes about a GOP, not 1000 frames."""
    import av

    from stages.media import video_io

    path = tmp_path / "gop.ts"
    with av.open(str(path), "w", format="mpegts") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt, vs.options = 128, 96, "yuv420p", {"g": "25", "bf": "2"}
        for i in range(1200):
            img = np.full((96, 128, 3), (i * 7) % 256, np.uint8)
            img[40:56, (i * 3) % 112:(i * 3) % 112 + 16] = 255 - img[0, 0]
            for pkt in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in vs.encode():
            c.mux(pkt)
    full = {i: f.to_ndarray(format="gray").astype(float) for i, f in video_io.iter_frames(path, 0) if i in (0, 1000)}
    decoded = []
    plain_iter = video_io.SkipCorrupt.__iter__

    def counting(self):
        for frame in plain_iter(self):
            decoded.append(frame.pts)
            yield frame

    monkeypatch.setattr(video_io.SkipCorrupt, "__iter__", counting)
    index, frame = next(video_io.iter_frames(path, 0, anchor=(1000, 1000 / 25.0)))  # clock 0 is frame 0
    assert index == 1000
    assert np.abs(frame.to_ndarray(format="gray") - full[1000]).mean() < 1.0
    assert len(decoded) < 100, f"{len(decoded)} frames decoded to reach frame 1000"


# -- a real talking head's own sound through other containers (skipped without ../shared/real-media) --------
#
# The variants above are composed here. These take a real file's own video packets (H.264 with
# B-frames, as published) and move its sound the way a user's tools do: re-encoded into another
# container and codec, or left as it is with its timestamps moved (ffmpeg -itsoffset). The sound on
# our clock must land exactly where the copy puts it. The reference is the benchmarks' independent
# reading (benchmarks/sync_corpus.audio_on_video_clock: first audio sample against first frame).

REAL_TALKER = "r3_v07_voxceleb2_chrischristie.mp4"


@pytest.fixture(scope="module")
def real_talker():
    from benchmarks import sync_corpus

    if not sync_corpus.available():
        pytest.skip("../shared/real-media is absent (a clone without the shared development media)")
    return sync_corpus.REAL / "videos" / REAL_TALKER


def _lag_s(ref: np.ndarray, got: np.ndarray, max_s: float = 0.5) -> float:
    """Seconds `got` trails `ref` by (negative: leads), by the peak of their cross-correlation."""
    n = min(len(ref), len(got))
    size = 1 << int(np.ceil(np.log2(2 * n)))
    xc = np.fft.irfft(np.fft.rfft(got[:n], size) * np.conj(np.fft.rfft(ref[:n], size)), size)
    m = int(max_s * SR)
    lags = np.concatenate([np.arange(0, m + 1), np.arange(-m, 0)])
    return float(lags[np.argmax(np.concatenate([xc[:m + 1], xc[-m:]]))]) / SR


def _moved_by_timestamps(src: Path, dst: Path, shift_s: float) -> None:
    """dst: src's packets as they are, every audio packet's timestamps moved by shift_s."""
    with av.open(str(src)) as ic, av.open(str(dst), "w") as oc:
        vs, aus = ic.streams.video[0], ic.streams.audio[0]
        out = {vs.index: oc.add_stream_from_template(vs), aus.index: oc.add_stream_from_template(aus)}
        d = int(round(shift_s / aus.time_base))
        for p in ic.demux(vs, aus):
            if p.pts is None and p.dts is None:
                continue
            if p.stream.index == aus.index:
                p.pts = None if p.pts is None else p.pts + d
                p.dts = None if p.dts is None else p.dts + d
            p.stream = out[p.stream.index]
            oc.mux(p)


@pytest.mark.parametrize("suffix,codec,rate", [("mp4", "aac", 48000), ("mov", "aac", 44100), ("mp4", "libmp3lame", 44100),
                                              ("flv", "aac", 44100), ("mkv", "libopus", 48000), ("ts", "ac3", 48000)])
def test_a_real_talkers_sound_reencoded_into_another_container_stays_in_place(real_talker, tmp_path, suffix, codec, rate):
    from benchmarks.sync_corpus import audio_on_video_clock, remux

    ref, _ = audio_on_video_clock(real_talker, SR)
    wav, _ = audio_on_video_clock(real_talker, rate)
    copy = tmp_path / f"copy.{suffix}"
    remux(real_talker, copy, wav, codec, rate)
    got, _ = decode_audio(copy, SR, on_clock=True)
    assert abs(_lag_s(ref, got)) <= 0.001, f"{suffix}/{codec}: the sound moved by {_lag_s(ref, got) * 1000:+.1f} ms"


@pytest.mark.parametrize("suffix,frames", [("mp4", 5), ("mp4", -8), ("mkv", -8), ("ts", 5), ("mov", -8)])
def test_a_real_talkers_sound_moved_by_its_timestamps_moves_by_exactly_that(real_talker, tmp_path, suffix, frames):
    """+5: the sound starts 5 frames after the picture (silence before it); -8: its first 8 frames'
    worth play before the first picture and are cut (an mp4 keeps them behind an edit list)."""
    from benchmarks.sync_corpus import audio_on_video_clock

    ref, fps = audio_on_video_clock(real_talker, SR)
    copy = tmp_path / f"moved.{suffix}"
    _moved_by_timestamps(real_talker, copy, frames / fps)
    got, _ = decode_audio(copy, SR, on_clock=True)
    assert abs(_lag_s(ref, got) - frames / fps) <= 0.001, f"{suffix} {frames:+d}: moved by {_lag_s(ref, got) * fps:+.2f} frames"
