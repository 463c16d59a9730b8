"""The OpenAI Batch API of `batchd serve`, driven by the openai Python SDK (sync and async):
upload, create, poll, download the output and error files, cancel, list with pagination,
the error paths, an embeddings batch, and a SIGKILL + restart mid-batch.

A batch belongs to the OpenAI API only: the Bedrock API neither lists nor finds it."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import time

import openai
import pytest
from conftest import FAIL_MARKER, FAST_MODEL, SHARED_DATA, SLOW_MODEL

ENDED = {"completed", "failed", "expired", "cancelled"}


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="test", max_retries=0, timeout=30)


def chat_lines(n: int, model: str = FAST_MODEL, prefix: str = "req", fail: set[int] = frozenset()) -> bytes:
    lines = []
    for i in range(n):
        text = f"{FAIL_MARKER} {i}" if i in fail else f"say hello {i}"
        lines.append(
            json.dumps(
                {
                    "custom_id": f"{prefix}-{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 16},
                }
            )
        )
    return ("\n".join(lines) + "\n").encode()


def upload(c: openai.OpenAI, data: bytes, name: str = "input.jsonl") -> str:
    return c.files.create(file=(name, io.BytesIO(data)), purpose="batch").id


def wait(c: openai.OpenAI, batch_id: str, statuses=ENDED, timeout: float = 240) -> openai.types.Batch:
    deadline = time.monotonic() + timeout
    while True:
        batch = c.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status} after {timeout}s: {batch}"
        time.sleep(0.2)


def lines_of(c: openai.OpenAI, file_id: str | None) -> list[dict]:
    if not file_id:
        return []
    return [json.loads(line) for line in c.files.content(file_id).text.splitlines() if line.strip()]


def test_the_shared_chat_file_runs_on_the_embedded_model(start_server):
    server = start_server("local")
    c = client(server)
    data = (SHARED_DATA / "openai-chat.jsonl").read_bytes()
    expected = [json.loads(line)["custom_id"] for line in data.decode().splitlines() if line.strip()]
    file_id = upload(c, data, "openai-chat.jsonl")
    batch = c.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"suite": "seed"})
    assert batch.status == "validating" and batch.id.startswith("batch_")
    assert batch.metadata == {"suite": "seed"}
    done = wait(c, batch.id)
    assert done.status == "completed", done
    assert done.request_counts.total == len(expected) == done.request_counts.completed
    assert done.error_file_id is None
    assert done.usage.output_tokens > 0
    # Every phase it went through has its time, in order; the others have none.
    assert done.created_at <= done.in_progress_at <= done.finalizing_at <= done.completed_at, done
    assert (done.failed_at, done.expired_at, done.cancelling_at, done.cancelled_at) == (None,) * 4
    # The object as sent, not as the SDK leniently builds it, is a valid Batch.
    openai.types.Batch.model_validate(c.batches.with_raw_response.retrieve(batch.id).http_response.json())
    out = lines_of(c, done.output_file_id)
    assert sorted(line["custom_id"] for line in out) == sorted(expected)
    for line in out:
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == "batchd-embedded-chat"
        assert body["choices"][0]["message"]["content"].strip(), line
    # The Bedrock API does not see OpenAI batches.
    assert server.bedrock.list_model_invocation_jobs()["invocationJobSummaries"] == []


def test_failed_requests_go_to_the_error_file_and_the_rest_to_the_output(start_server):
    c = client(start_server("local"))
    batch = c.batches.create(input_file_id=upload(c, chat_lines(6, fail={1, 4})), endpoint="/v1/chat/completions", completion_window="24h")
    done = wait(c, batch.id)
    assert done.status == "completed", done
    assert (done.request_counts.completed, done.request_counts.failed) == (4, 2)
    assert [line["custom_id"] for line in lines_of(c, done.output_file_id)] == ["req-0", "req-2", "req-3", "req-5"]
    errors = lines_of(c, done.error_file_id)
    assert [line["custom_id"] for line in errors] == ["req-1", "req-4"]
    for line in errors:
        assert line["error"] is None
        assert line["response"]["status_code"] == 400
        assert line["response"]["body"]["error"]["type"] == "invalid_request_error"


def test_cancel_keeps_what_finished_and_answers_the_rest_as_cancelled(start_server):
    c = client(start_server("local", {"engine": {"shutdown_grace_seconds": 5}}))
    batch = c.batches.create(input_file_id=upload(c, chat_lines(60, SLOW_MODEL)), endpoint="/v1/chat/completions", completion_window="24h")
    wait(c, batch.id, {"in_progress"}, timeout=30)
    time.sleep(1.0)
    cancelling = c.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = wait(c, batch.id)
    assert done.status == "cancelled", done
    assert done.in_progress_at <= done.cancelling_at <= done.cancelled_at and done.completed_at is None, done
    out = lines_of(c, done.output_file_id)
    errors = lines_of(c, done.error_file_id)
    assert out, "what finished before the cancel is kept"
    assert all(e["error"]["code"] == "batch_cancelled" and e["response"] is None for e in errors), errors[:3]
    ids = sorted([line["custom_id"] for line in out + errors], key=lambda s: int(s.split("-")[1]))
    assert ids == [f"req-{i}" for i in range(60)], "every request answered exactly once"
    with pytest.raises(openai.ConflictError):
        c.batches.cancel(batch.id)


def test_list_pages_newest_first_and_errors_have_openais_classes(start_server):
    c = client(start_server("local"))
    file_id = upload(c, chat_lines(1))
    created = [c.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h").id for _ in range(3)]
    page = c.batches.list(limit=2)
    assert [b.id for b in page.data] == created[::-1][:2] and page.has_more
    assert [b.id for b in c.batches.list(limit=2)] == created[::-1], "the SDK follows `after`"
    with pytest.raises(openai.NotFoundError):
        c.batches.retrieve("batch_abcdefabcdef")
    with pytest.raises(openai.BadRequestError) as bad:
        c.batches.create(input_file_id=file_id, endpoint="/v1/images/generations", completion_window="24h")
    assert "/v1/images/generations" in str(bad.value) and bad.value.body["param"] == "endpoint"
    with pytest.raises(openai.BadRequestError):
        c.batches.create(input_file_id="file-nothere", endpoint="/v1/chat/completions", completion_window="24h")
    # A line that breaks the rules fails the batch later, naming the line.
    broken = chat_lines(3).decode().splitlines()
    broken[1] = broken[1].replace("/v1/chat/completions", "/v1/embeddings")
    batch = c.batches.create(input_file_id=upload(c, ("\n".join(broken) + "\n").encode()), endpoint="/v1/chat/completions", completion_window="24h")
    done = wait(c, batch.id)
    assert done.status == "failed", done
    assert [(e.line, e.param) for e in done.errors.data] == [(2, "url")], done.errors

    async def retrieve_async():
        async with openai.AsyncOpenAI(base_url=c.base_url, api_key="test", max_retries=0) as ac:
            return await ac.batches.retrieve(batch.id)

    assert asyncio.run(retrieve_async()).status == "failed"


def test_an_embeddings_batch_answers_vectors(start_server):
    c = client(start_server("local"))
    lines = [
        json.dumps({"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings", "body": {"model": "batchd-embedded-embeddings", "input": text}})
        for i, text in enumerate(["first text", ["second", "third"]])
    ]
    batch = c.batches.create(input_file_id=upload(c, ("\n".join(lines) + "\n").encode()), endpoint="/v1/embeddings", completion_window="24h")
    done = wait(c, batch.id)
    assert done.status == "completed", done
    out = {line["custom_id"]: line["response"]["body"] for line in lines_of(c, done.output_file_id)}
    assert [len(out["e0"]["data"]), len(out["e1"]["data"])] == [1, 2]
    assert len(out["e1"]["data"][1]["embedding"]) == 384


@pytest.mark.parametrize(
    ("endpoint", "body", "answer_type"),
    [
        ("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 12}, openai.types.Completion),
        ("/v1/responses", {"instructions": "Be brief.", "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hello"}]}], "max_output_tokens": 12}, openai.types.responses.Response),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 12}, openai.types.chat.ChatCompletion),
    ],
)
def test_each_text_endpoint_answers_objects_the_sdk_reads(start_server, endpoint, body, answer_type):
    """Completions and Responses bodies run as chat; each answer parses as the SDK's own type."""
    c = client(start_server("local"))
    lines = [json.dumps({"custom_id": f"t{i}", "method": "POST", "url": endpoint, "body": {"model": FAST_MODEL, **body}}) for i in range(3)]
    bad = json.dumps({"custom_id": "bad", "method": "POST", "url": endpoint, "body": {"model": FAST_MODEL, "stream": True, **body}})
    refused = c.batches.create(input_file_id=upload(c, (bad + "\n").encode()), endpoint=endpoint, completion_window="24h")
    failed = wait(c, refused.id)
    assert failed.status == "failed" and failed.errors.data[0].param == "body.stream", failed
    batch = c.batches.create(input_file_id=upload(c, ("\n".join(lines) + "\n").encode()), endpoint=endpoint, completion_window="24h")
    done = wait(c, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 3, done
    for line in lines_of(c, done.output_file_id):
        answer = answer_type.model_validate(line["response"]["body"], strict=False)
        assert answer.model == FAST_MODEL and answer.usage is not None
        text = {
            openai.types.Completion: lambda a: a.choices[0].text,
            openai.types.responses.Response: lambda a: a.output_text,
            openai.types.chat.ChatCompletion: lambda a: a.choices[0].message.content,
        }[answer_type](answer)
        assert text.strip(), line


def test_sigkill_and_restart_answer_every_request_exactly_once(start_server):
    server = start_server("local")
    c = client(server)
    batch = c.batches.create(input_file_id=upload(c, chat_lines(60, SLOW_MODEL)), endpoint="/v1/chat/completions", completion_window="24h")
    wait(c, batch.id, {"in_progress"}, timeout=30)
    time.sleep(2.0)
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    server = start_server("local", data_dir=server.data_dir, config_path=server.config_path)
    c = client(server)
    done = wait(c, batch.id)
    assert done.status == "completed", done
    ids = [line["custom_id"] for line in lines_of(c, done.output_file_id)]
    assert sorted(ids, key=lambda s: int(s.split("-")[1])) == [f"req-{i}" for i in range(60)]
    assert len(set(ids)) == 60


def test_batchd_results_reads_an_openai_batch(start_server):
    server = start_server("local")
    c = client(server)
    batch = c.batches.create(input_file_id=upload(c, chat_lines(5, fail={2})), endpoint="/v1/chat/completions", completion_window="24h")
    assert wait(c, batch.id).status == "completed"
    import subprocess

    from conftest import BATCHD

    out = subprocess.run(
        [str(BATCHD), "results", batch.id, "--format", "json", "--data-dir", str(server.data_dir), "--config", str(server.config_path)],
        capture_output=True,
        text=True,
        env=server.env,
        check=True,
    )
    analysis = json.loads(out.stdout)
    assert (analysis["total_processed"], analysis["success_count"], analysis["error_count"]) == (5, 4, 1)
    assert analysis["errors_by_code"][0]["code"] == "400"
    assert analysis["processing_time"]["records"] == 5, analysis
