"""Resumable target downloads: HTTP Range, If-Range and ETag, over a real server."""

from __future__ import annotations

import os
import urllib.request

import pytest

from runtime.agent import DownloadInterruptedError

BIG = os.urandom(300_000)


@pytest.fixture
def published(repo):
    info = repo.publish_target("default", "big-1.edgepack", BIG)
    return info, f"targets/groups/default/{info.hashes['sha256']}.big-1.edgepack"


def test_dropped_download_resumes_from_where_it_stopped(published, make_client, served) -> None:
    info, key = published
    served[1].drop_after[key] = 100_000
    client = make_client()
    tinfo = client.require_target(info.path)
    with pytest.raises(DownloadInterruptedError):
        client.download(tinfo)
    part = next(client.downloads_dir.glob("*.part"))
    assert part.stat().st_size == 100_000
    served[1].requests.clear()
    result = client.download(tinfo)
    assert result.resumed_from == 100_000 and result.bytes_received == len(BIG) - 100_000
    assert result.path.read_bytes() == BIG
    (_, headers), = [r for r in served[1].requests if r[0] == key]
    assert headers["Range"] == "bytes=100000-" and headers["If-Range"] == f'"{info.hashes["sha256"]}"'
    assert not list(client.downloads_dir.glob("*.part*"))


def test_resume_survives_a_new_client_process(published, make_client, served) -> None:
    info, key = published
    served[1].drop_after[key] = 50_000
    first = make_client("dev")
    with pytest.raises(DownloadInterruptedError):
        first.download(first.require_target(info.path))
    second = make_client("dev")  # same state directory, fresh objects: a restart
    result = second.download(second.require_target(info.path))
    assert result.resumed_from == 50_000 and result.path.read_bytes() == BIG


def test_part_file_from_other_content_restarts_from_zero(published, make_client, served) -> None:
    info, key = published
    client = make_client()
    tinfo = client.require_target(info.path)
    client.downloads_dir.mkdir(parents=True, exist_ok=True)
    stem = client.downloads_dir / f"{info.hashes['sha256']}.big-1.edgepack"
    stem.with_name(stem.name + ".part").write_bytes(b"x" * 1000)
    stem.with_name(stem.name + ".part.etag").write_text('"not-this-file"')
    result = client.download(tinfo)  # If-Range mismatch -> the server sends the whole file
    assert result.resumed_from == 0 and result.bytes_received == len(BIG)
    assert result.path.read_bytes() == BIG


def test_target_has_etag_and_answers_304_and_206(published, served) -> None:
    info, key = published
    url = f"{served[0].url}/tuf/{key}"
    etag = f'"{info.hashes["sha256"]}"'
    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 (loopback)
        assert r.headers["ETag"] == etag and r.headers["Accept-Ranges"] == "bytes"
    req = urllib.request.Request(url, headers={"If-None-Match": etag})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)  # noqa: S310
    assert e.value.code == 304
    req = urllib.request.Request(url, headers={"Range": "bytes=10-19"})
    with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310
        assert r.status == 206 and r.read() == BIG[10:20]
        assert r.headers["Content-Range"] == f"bytes 10-19/{len(BIG)}"
