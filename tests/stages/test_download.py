"""The download stage against a real HTTP server on 127.0.0.1 and real files, without Ray."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pipeline.sources_file import input_id
from stages.base import StageContext
from stages.download.stage import DownloadStage


def fetch(uri: str, out: Path, **kw) -> dict:
    stage = DownloadStage(retries=kw.pop("retries", 2), backoff_s=0.05, **kw)
    ctx = StageContext(out=out)
    (row,) = stage.process({"uri": uri, "input_id": input_id(uri), "consent": kw.get("consent")}, ctx)
    row["_counters"] = dict(ctx.counters)
    return row


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_local_file_is_stored_by_content_and_probed(demo_corpus, tmp_path):
    row = fetch(str(demo_corpus / "talking.mp4"), tmp_path)
    assert row["status"] == "ok", row["error"]
    assert row["sha256"] == sha(demo_corpus / "talking.mp4")
    assert row["source_id"] == row["sha256"][:16]
    assert row["media_path"] == f"media/{row['sha256'][:2]}/{row['sha256']}.mp4"
    assert (tmp_path / row["media_path"]).is_file()
    assert row["width"] == 352 and row["height"] == 288 and abs(row["fps"] - 25) < 1e-6
    assert abs(row["duration_s"] - 30.0) < 0.1 and row["has_audio"] and row["audio_codec"] == "aac"
    import soundfile as sf

    info = sf.info(str(tmp_path / row["audio_path"]))
    assert info.samplerate == 16000 and info.channels == 1 and abs(info.duration - 30.0) < 0.2


def test_same_bytes_from_two_uris_are_stored_once(demo_corpus, server, tmp_path):
    a = fetch(str(demo_corpus / "cuts.mp4"), tmp_path)
    b = fetch(server.url("cuts.mp4"), tmp_path)
    assert a["status"] == b["status"] == "ok"
    assert a["source_id"] == b["source_id"] and a["media_path"] == b["media_path"]
    assert len(list((tmp_path / "media").rglob("*.mp4"))) == 1


def test_redirects_are_followed_and_recorded(server, tmp_path):
    row = fetch(server.url("fault/redirect/cuts.mp4"), tmp_path)
    assert row["status"] == "ok"
    assert row["final_url"] == server.url("cuts.mp4") and row["redirects"] == [server.url("cuts.mp4")]


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("missing.mp4", "http_404"),
        ("fault/500/cuts.mp4", "http_500"),
        ("fault/html/cuts.mp4", "not_media"),
        ("fault/loop/0", "redirect_loop"),
        ("bad/not_a_video.mp4", "not_media"),
        ("bad/empty.mp4", "empty_file"),
        ("bad/truncated.mp4", "unreadable_container"),
    ],
)
def test_bad_http_sources_get_a_clear_failed_row(server, tmp_path, path, reason):
    row = fetch(server.url(path), tmp_path)
    assert row["status"] == "failed"
    assert row["error"].startswith(reason + ":"), row["error"]
    assert row.get("source_id") is None


def test_5xx_is_retried_with_backoff(server, tmp_path):
    row = fetch(server.url("fault/flaky/cuts.mp4"), tmp_path, retries=3)
    assert row["status"] == "ok", row["error"]
    assert row["_counters"]["http_retries"] == 2


def test_truncated_body_resumes_with_range(demo_corpus, server, tmp_path):
    row = fetch(server.url("fault/truncate/talking.mp4"), tmp_path)
    assert row["status"] == "ok", row["error"]
    assert row["sha256"] == sha(demo_corpus / "talking.mp4")
    assert row["_counters"]["http_retries"] == 1
    assert not list((tmp_path / "downloads").glob("*.part"))


def test_stalled_server_times_out(server, tmp_path):
    row = fetch(server.url("fault/hang/cuts.mp4"), tmp_path, read_timeout_s=0.5, retries=1)
    assert row["status"] == "failed" and row["error"].split(":")[0] in ("timeout", "truncated"), row["error"]


def test_size_cap(server, tmp_path):
    row = fetch(server.url("cuts.mp4"), tmp_path, max_bytes=10_000)
    assert row["status"] == "failed" and row["error"].startswith("too_large:")


def test_opt_out_header_is_recorded_and_body_never_fetched(server, tmp_path):
    row = fetch(server.url("fault/noai/cuts.mp4"), tmp_path)
    assert row["status"] == "skipped" and row["error"].startswith("opt_out:")
    assert not (tmp_path / "media").exists()
    assert not any(p.stat().st_size for p in (tmp_path / "downloads").glob("*"))


def test_consent_no_is_skipped_without_touching_the_network(server, tmp_path):
    uri = server.url("cuts.mp4")
    stage = DownloadStage()
    (row,) = stage.process({"uri": uri, "input_id": input_id(uri), "consent": "no"}, StageContext(out=tmp_path))
    assert row["status"] == "skipped" and row["error"].startswith("consent_no:")
    assert server.hits["/cuts.mp4"] == 0


def test_platform_url_without_yt_dlp_says_so(tmp_path):
    try:
        import yt_dlp  # noqa: F401

        pytest.skip("yt-dlp is installed here; this test covers its absence")
    except ImportError:
        pass
    row = fetch("https://www.youtube.com/watch?v=dQw4w9WgXcQ", tmp_path)
    assert row["status"] == "failed" and row["error"].startswith("yt_dlp_missing:")
    assert "pip install" in row["error"]


def test_hostile_names_never_escape_out(demo_corpus, server, tmp_path):
    hostile_dir = tmp_path / "in" / "..;rm -rf ~ `x`"
    hostile_dir.mkdir(parents=True)
    hostile = hostile_dir / "../../ü ñ 🎬 $(reboot).mp4".replace("/", "_")
    hostile.write_bytes((demo_corpus / "cuts.mp4").read_bytes())
    out = tmp_path / "out"
    before = files_under(tmp_path)
    rows = [fetch(str(hostile), out), fetch(server.url("..%2F..%2F..%2Fetc%2Fpasswd"), out),
            fetch(server.url("fault/redirect/..%2Fcuts.mp4"), out)]
    assert rows[0]["status"] == "ok"
    assert rows[1]["status"] == "failed"
    created = files_under(tmp_path) - before
    assert created and all(out in p.parents for p in created), created
    for p in created:
        assert p.name.isascii() and " " not in p.name and ";" not in p.name


def test_unsupported_scheme(tmp_path):
    row = fetch("ftp://example.org/video.mp4", tmp_path)
    assert row["status"] == "failed" and row["error"].startswith("unsupported_scheme:")


def test_directory_and_missing_local_paths(tmp_path):
    assert fetch(str(tmp_path), tmp_path / "o")["error"].startswith("not_a_file:")
    assert fetch(str(tmp_path / "nope.mp4"), tmp_path / "o")["error"].startswith("not_found:")
    assert fetch((tmp_path / "nope.mp4").as_uri(), tmp_path / "o")["error"].startswith("not_found:")


def test_audio_only_and_image_sources_are_rejected_with_reasons(demo_corpus, tmp_path):
    assert fetch(str(demo_corpus / "speech.wav"), tmp_path)["error"].startswith("no_video_stream:")
    assert fetch(str(demo_corpus / "portraits" / "hanks.png"), tmp_path)["error"].startswith("not_media:")
    assert not (tmp_path / "media").exists()  # probed before it is stored: a failed input leaves nothing
    assert not any((tmp_path / "downloads").iterdir())


def test_two_writers_of_the_same_content_never_clash(demo_corpus, tmp_path):
    """The same bytes from several URIs are fetched at once by different workers and land on one
    content-addressed path: each writer has its own temporary name, so every write succeeds."""
    from concurrent.futures import ThreadPoolExecutor

    import soundfile as sf

    from stages.media.probe import extract_audio

    wav = tmp_path / "same.wav"
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: extract_audio(demo_corpus / "talking.mp4", wav), range(8)))
    assert all(abs(r["seconds"] - 30.0) < 0.1 for r in results)
    assert abs(sf.info(str(wav)).duration - 30.0) < 0.1
    assert [p.name for p in tmp_path.iterdir()] == ["same.wav"]  # no temporary left behind


# -- hostile inputs, round two (issue 18) ----------------------------------------------------------

SECRET = "s3cr3tVALUE42"


def left_behind(out: Path) -> list[Path]:
    """Files with bytes under OUT: a failed input may leave none (its rows are written by the worker)."""
    return [p for p in out.rglob("*") if p.is_file() and p.stat().st_size]


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        (f"missing.mp4?X-Amz-Credential=AKIA{SECRET}&X-Amz-Signature={SECRET}", "http_404"),
        (f"fault/to-file/x?token={SECRET}", "bad_redirect"),
        ("fault/to-ftp/x", "bad_redirect"),
        ("fault/partial/cuts.mp4", "unasked_partial"),
        ("fault/fakegzip/cuts.mp4", "bad_encoding"),
        ("fault/bomb/64", "not_media"),  # stops after the first MiB of what it expands to
        ("fault/endless/cuts.mp4", "too_large"),
    ],
)
def test_hostile_http_answers_get_their_reason_and_leave_nothing(server, tmp_path, path, reason):
    url = server.url(path).replace("http://", f"http://alice:{SECRET}@")
    row = fetch(url, tmp_path, max_bytes=8 << 20)
    assert row["status"] == "failed" and row["error"].startswith(reason + ":"), row["error"]
    assert SECRET not in repr(row), row
    assert "REDACTED@127.0.0.1" in row["uri"]
    assert left_behind(tmp_path) == []


def test_a_spliced_resume_is_refused_and_restarted_from_zero(demo_corpus, server, tmp_path):
    """The Range retry is answered with the whole file from byte 0: appending it would splice the file."""
    row = fetch(server.url("fault/splice/talking.mp4"), tmp_path)
    assert row["status"] == "ok", row["error"]
    assert row["sha256"] == sha(demo_corpus / "talking.mp4")
    assert row["bytes"] == (demo_corpus / "talking.mp4").stat().st_size
    assert row["_counters"]["range_restarts"] == 1


def test_signed_url_is_stored_redacted_with_a_stable_keyed_id(demo_corpus, server, tmp_path):
    from manifests.redact import uri_key

    url = server.url(f"cuts.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature={SECRET}&x=1")
    key = uri_key(tmp_path)
    assert oct((tmp_path / ".uri_key").stat().st_mode & 0o777) == "0o600"
    assert input_id(url, key) == input_id(url, uri_key(tmp_path)) != input_id(url, None)
    stage = DownloadStage()
    (row,) = stage.process({"uri": url, "input_id": input_id(url, key)}, StageContext(out=tmp_path))
    assert row["status"] == "ok", row["error"]
    assert row["uri"] == server.url("cuts.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=REDACTED&x=1")
    assert SECRET not in repr(row)


def test_stored_media_is_a_copy_that_ignores_later_edits(demo_corpus, tmp_path):
    mine = tmp_path / "mine.mp4"
    mine.write_bytes((demo_corpus / "cuts.mp4").read_bytes())
    row = fetch(str(mine), tmp_path / "out")
    stored = tmp_path / "out" / row["media_path"]
    assert os.stat(stored).st_ino != os.stat(mine).st_ino and os.stat(stored).st_nlink == 1
    with open(mine, "r+b") as fh:  # the user edits the original in place
        fh.seek(1000)
        fh.write(b"\0" * 100)
    assert sha(stored) == row["sha256"]


def test_local_names_are_taken_as_written(demo_corpus, tmp_path):
    data = (demo_corpus / "cuts.mp4").read_bytes()
    for name in (" lead.mp4", "trail.mp4 ", "take:2.mp4"):
        (tmp_path / name).write_bytes(data)
        row = fetch(str(tmp_path / name), tmp_path / "out")
        assert row["status"] == "ok", (name, row["error"])
    too_long = tmp_path / ("x" * 300 + ".mp4")
    assert fetch(str(too_long), tmp_path / "out")["error"].startswith("name_too_long:")


@pytest.mark.parametrize(("fmt", "mime"), [("flv", "video/x-flv"), ("mpeg", "video/mpeg"), ("m2ts", "video/mp2t"),
                                          ("wmv", "video/x-ms-asf")])
def test_real_containers_are_media(tmp_path, fmt, mime):
    from tests.fixtures.bad_corpus import container_clip

    row = fetch(str(container_clip(tmp_path, fmt)), tmp_path / "out")
    assert row["status"] == "ok", row["error"]
    assert row["mime"] == mime and row["n_frames"] and row["width"] == 176


def test_a_client_that_hangs_up_mid_file_prints_no_traceback(tmp_path, capfd):
    """The loopback server (`emo serve`, the download tests) on a client that reads a little of a big
    file and closes: the client's choice, not a server error, so nothing on stderr; the server still
    answers the next request."""
    import socket
    import time
    import urllib.request

    from pipeline.serve import LoopbackServer

    (tmp_path / "big.mp4").write_bytes(os.urandom(64 << 20))  # more than loopback's socket buffers
    with LoopbackServer(tmp_path) as srv:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", srv.port)) as s:
                s.sendall(b"GET /big.mp4 HTTP/1.1\r\nHost: x\r\n\r\n")
                assert s.recv(4096).startswith(b"HTTP/1.0 200")
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
        time.sleep(1.0)
        with urllib.request.urlopen(srv.url("big.mp4")) as r:
            assert r.status == 200 and len(r.read(1024)) == 1024
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err[-2000:]
