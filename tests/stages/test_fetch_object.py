"""Media URIs on object storage (s3://) in a sources file, fetched from a real S3-protocol server on
127.0.0.1 (moto's server mode) with the standard AWS_* settings: the same caps and error rows as HTTP."""

from __future__ import annotations

import hashlib

import pytest

from manifests import ManifestStore
from pipeline.runner import CurateOptions, curate
from tests.pipeline.test_curate import write_sources
from tests.s3_server import moto_s3, new_bucket
from tests.stages.test_download import fetch


def fill_bucket(endpoint: str, demo_corpus) -> str:
    """A new bucket holding a real video, a text file named .mp4, an empty object and a 'folder'."""
    import boto3

    name = new_bucket(endpoint)
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.put_object(Bucket=name, Key="media/talking.mp4", Body=(demo_corpus / "talking.mp4").read_bytes())
    s3.put_object(Bucket=name, Key="media/notes.mp4", Body=b"these are meeting notes, not a video\n" * 40000)
    s3.put_object(Bucket=name, Key="media/empty.mp4", Body=b"")
    s3.put_object(Bucket=name, Key="media/folder/inside.mp4", Body=b"x")
    return name


@pytest.fixture(scope="module")
def bucket(demo_corpus):
    with moto_s3() as endpoint:
        yield fill_bucket(endpoint, demo_corpus)


def test_an_s3_video_is_fetched_stored_by_content_and_probed(bucket, demo_corpus, tmp_path):
    row = fetch(f"s3://{bucket}/media/talking.mp4", tmp_path)
    assert row["status"] == "ok", row["error"]
    assert row["sha256"] == hashlib.sha256((demo_corpus / "talking.mp4").read_bytes()).hexdigest()
    assert (tmp_path / row["media_path"]).is_file() and row["has_audio"] and abs(row["duration_s"] - 30.0) < 0.1
    assert row["final_url"] == f"s3://{bucket}/media/talking.mp4"
    assert not list((tmp_path / "downloads").iterdir())  # the partial copy is gone


@pytest.mark.parametrize(("key", "reason"), [
    ("media/missing.mp4", "not_found"),
    ("media/notes.mp4", "not_media"),
    ("media/empty.mp4", "empty_file"),
    ("media/folder", "not_a_file"),
])
def test_a_bad_object_is_an_error_row(bucket, tmp_path, key, reason):
    row = fetch(f"s3://{bucket}/{key}", tmp_path)
    assert row["status"] == "failed" and row["error"].startswith(f"{reason}:"), row["error"]
    assert not (tmp_path / "media").exists()


def test_an_object_over_the_cap_is_refused_before_its_body_is_read(bucket, tmp_path):
    row = fetch(f"s3://{bucket}/media/talking.mp4", tmp_path, max_bytes=100_000)
    assert row["status"] == "failed" and row["error"].startswith("too_large:"), row["error"]
    assert not (tmp_path / "media").exists()


def test_a_missing_bucket_and_an_unknown_scheme_are_error_rows(bucket, tmp_path):
    row = fetch("s3://no-such-bucket-emo/x.mp4", tmp_path)
    assert row["status"] == "failed" and row["error"].split(":")[0] in ("not_found", "object_store_error")
    row = fetch("nosuchscheme://bucket/x.mp4", tmp_path)
    assert row["status"] == "failed" and row["error"].startswith("unsupported_scheme:"), row["error"]


def test_curate_fetches_s3_sources_on_ray_workers_and_goes_on_past_bad_ones(ray_local, demo_corpus, tmp_path):
    """Ray workers reach the store through the settings the driver forwards (pipeline/runner.py), not
    through an environment they inherited: this store (its endpoint) is started after Ray was."""
    with moto_s3() as endpoint:

        @ray_local.remote(num_cpus=0)
        def inherited_endpoint() -> str | None:
            import os

            return os.environ.get("AWS_ENDPOINT_URL")

        assert ray_local.get(inherited_endpoint.remote()) != endpoint  # else this test could not fail
        bucket = fill_bucket(endpoint, demo_corpus)
        uris = [f"s3://{bucket}/media/talking.mp4", f"s3://{bucket}/media/missing.mp4",
                f"s3://{bucket}/media/notes.mp4"]
        sources = write_sources(tmp_path / "s.csv", uris)
        curate(CurateOptions(sources=str(sources), out=str(tmp_path / "out"), stages=("download",)))
    rows = {r["uri"]: r for r in ManifestStore(tmp_path / "out").read("sources").to_pylist()}
    assert rows[uris[0]]["status"] == "ok", rows[uris[0]]["error"]
    assert rows[uris[1]]["error"].startswith("not_found:") and rows[uris[2]]["error"].startswith("not_media:")
