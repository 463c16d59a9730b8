"""The OpenAI Files API and models of `batchd serve`, driven by the openai Python SDK (sync and
async): upload, retrieve, list with pagination and the purpose filter, download, delete, and
the error paths as the SDK's exception classes. Uploads go to the default files folder
(local mode) or to an `s3://` files_location on moto (s3 mode)."""

from __future__ import annotations

import asyncio
import io

import openai
import pytest
from conftest import FAST_MODEL, SHARED_DATA, SLOW_MODEL, unique

CHAT = SHARED_DATA / "openai-chat.jsonl"
THIRTY_DAYS = 30 * 24 * 3600
# The limit of the server that checks it; openai-chat.jsonl (about 2 KB) is below it.
SMALL_LIMIT = 4000


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="test", max_retries=0, timeout=30)


def files_server(start_server, mode: str = "local", **openai_section):
    """A server; in s3 mode its files live in a fresh moto bucket (returned with it)."""
    bucket = None
    if mode == "s3":
        bucket = unique("files")
        openai_section.setdefault("files_location", f"s3://{bucket}/uploads/")
    server = start_server(mode, overrides={"openai": openai_section} if openai_section else None)
    if bucket:
        server.buckets.create(bucket)
    return server, bucket


@pytest.mark.parametrize("mode", ["local", "s3"])
def test_upload_retrieve_download_and_delete(start_server, mode):
    server, bucket = files_server(start_server, mode)
    c = client(server)
    data = CHAT.read_bytes()
    with CHAT.open("rb") as f:
        uploaded = c.files.create(file=f, purpose="batch")
    assert uploaded.id.startswith("file-") and len(uploaded.id) == 29
    assert uploaded.object == "file"
    assert (uploaded.filename, uploaded.bytes, uploaded.purpose) == ("openai-chat.jsonl", len(data), "batch")
    assert uploaded.expires_at == uploaded.created_at + THIRTY_DAYS
    assert uploaded.status == "processed"
    if bucket:
        assert server.buckets.get(bucket, f"uploads/{uploaded.id}") == data

    assert c.files.retrieve(uploaded.id) == uploaded
    assert c.files.content(uploaded.id).content == data

    deleted = c.files.delete(uploaded.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (uploaded.id, "file", True)
    for call in (c.files.retrieve, c.files.content, c.files.delete):
        with pytest.raises(openai.NotFoundError) as e:
            call(uploaded.id)
        assert e.value.status_code == 404
        assert e.value.body["message"] == f"No such File object: {uploaded.id}"
    if bucket:
        assert server.buckets.keys(bucket, "uploads/") == []
    assert c.files.list().data == []


def test_list_pages_newest_first_and_filters_by_purpose(start_server):
    server, _ = files_server(start_server)
    c = client(server)
    ids = {c.files.create(file=(f"part-{i}.jsonl", io.BytesIO(b'{"n": %d}\n' % i)), purpose="batch").id for i in range(5)}

    page = c.files.list(limit=2)
    assert len(page.data) == 2 and page.has_more
    # The SDK's auto-pagination follows `after` to the end.
    newest_first = [f.id for f in c.files.list(limit=2)]
    assert sorted(newest_first) == sorted(ids)
    assert [f.id for f in page.data] == newest_first[:2]
    second = page.get_next_page()
    assert [f.id for f in second.data] == newest_first[2:4]
    assert [f.id for f in c.files.list(order="asc", limit=3)] == newest_first[::-1]
    created = [f.created_at for f in c.files.list()]
    assert created == sorted(created, reverse=True)

    assert len(c.files.list(purpose="batch").data) == 5
    assert c.files.list(purpose="batch_output").data == []
    for bad in ({"limit": 0}, {"limit": 10001}, {"order": "newest"}):
        with pytest.raises(openai.BadRequestError) as e:
            c.files.list(**bad)
        assert e.value.param == next(iter(bad))


def test_bad_uploads_raise_bad_request_with_openais_messages(start_server):
    server, _ = files_server(start_server, max_file_bytes=SMALL_LIMIT)
    c = client(server)
    data = CHAT.read_bytes()
    assert len(data) < SMALL_LIMIT

    with pytest.raises(openai.BadRequestError) as e:
        c.files.create(file=("notes.txt", io.BytesIO(data)), purpose="batch")
    assert e.value.body["message"] == "Invalid file format for Batch API. Must be .jsonl"
    assert (e.value.status_code, e.value.type, e.value.param) == (400, "invalid_request_error", "file")

    with pytest.raises(openai.BadRequestError) as e:
        c.files.create(file=("big.jsonl", io.BytesIO(data * 2)), purpose="batch")
    assert e.value.body["message"] == "File is too large."

    with pytest.raises(openai.BadRequestError) as e:
        c.files.create(file=("tune.jsonl", io.BytesIO(data)), purpose="fine-tune")
    assert e.value.param == "purpose"

    with pytest.raises(openai.BadRequestError) as e:
        c.files.create(
            file=("soon.jsonl", io.BytesIO(data)), purpose="batch", expires_after={"anchor": "created_at", "seconds": 60}
        )
    assert e.value.param == "expires_after.seconds"
    assert c.files.list().data == []

    # Exactly what fits, with an expiry of its own.
    fits = c.files.create(
        file=("fits.jsonl", io.BytesIO(data)), purpose="batch", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    assert fits.expires_at == fits.created_at + 3600
    assert [f.id for f in c.files.list()] == [fits.id]


def test_models_lists_the_configured_ids(start_server):
    server, _ = files_server(start_server)
    c = client(server)
    ids = {m.id for m in c.models.list()}
    assert {FAST_MODEL, SLOW_MODEL} <= ids
    model = c.models.retrieve(FAST_MODEL)
    assert (model.id, model.object, model.owned_by) == (FAST_MODEL, "model", "batchd")
    with pytest.raises(openai.NotFoundError) as e:
        c.models.retrieve("gpt-4o-nonexistent")
    assert e.value.code == "model_not_found"


def test_the_async_client(start_server):
    server, _ = files_server(start_server)
    data = CHAT.read_bytes()

    async def run():
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="test", max_retries=0) as c:
            uploaded = await c.files.create(file=("chat.jsonl", data), purpose="batch")
            listed = [f.id async for f in c.files.list(limit=1)]
            assert listed == [uploaded.id]
            content = await c.files.content(uploaded.id)
            assert content.content == data
            assert (await c.files.delete(uploaded.id)).deleted
            with pytest.raises(openai.NotFoundError):
                await c.files.retrieve(uploaded.id)

    asyncio.run(run())
