"""Two `batchd serve` instances sharing one Postgres job store and one S3 store (moto): a job
is split into chunks that both instances claim (each instance's own /metrics shows its share),
an instance killed mid-job loses its chunks to the other once their leases run out, and an
instance paused past its lease has its late commit refused. Every case checks that each record
is in the output exactly once, in input order, with an exact manifest."""

from __future__ import annotations

import io
import json
import signal
import time

import openai
from conftest import (
    FAST_MODEL,
    SLOW_MODEL,
    create_job,
    expected_manifest,
    fresh_pg_database,
    http_json,
    job_id_of,
    metric_sum,
    parse_jsonl,
    read_manifest,
    records,
    unique,
    wait_for_status,
)

# Chunks of 6 records on the slow model (~0.2 s a record, 2 at a time per instance): a chunk
# takes about 0.6 s, and a 2 s lease runs out soon after an instance stops renewing it.
CLUSTER = {"cluster": {"lease_seconds": 2, "chunk_records": 6}}


def two_instances(start_server, **sections):
    url = fresh_pg_database()
    env = {"BATCHD_DATABASE_URL": url}
    overrides = {**CLUSTER, **sections}
    return start_server(mode="s3", overrides=overrides, env=env), start_server(mode="s3", overrides=overrides, env=env)


def processed_on(server, job_id: str) -> float:
    return metric_sum(server.url, "batchd_records_processed_total", job_id=job_id)


def wait_until(what, check, timeout: float = 60, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting until {what}")
        time.sleep(interval)


def start_job(server, bucket_name: str, n: int) -> tuple[str, list[str]]:
    b = server.buckets
    b.create(bucket_name)
    body, ids = records(n)
    in_uri = b.put(bucket_name, "in/part-1.jsonl", body)
    arn = create_job(server.bedrock, unique("cluster"), in_uri, f"s3://{bucket_name}/out/", model=SLOW_MODEL)
    return arn, ids


def check_output(server, bucket_name: str, arn: str, ids: list[str]) -> dict:
    """The job's output has every record once, in order, and its manifest counts it exactly."""
    job_id = job_id_of(arn)
    lines = parse_jsonl(server.buckets.get(bucket_name, f"out/{job_id}/part-1.jsonl.out"))
    assert [line["recordId"] for line in lines] == ids
    assert all("modelOutput" in line for line in lines), [line for line in lines if "modelOutput" not in line][:2]
    manifest = read_manifest(server.buckets, bucket_name, "out/", job_id)
    assert manifest == expected_manifest(lines, len(ids)), manifest
    # The chunks' parts go right after the job ends.
    wait_until("the parts are removed", lambda: server.buckets.keys(bucket_name, f"out/{job_id}.parts/") == [], timeout=10)
    return manifest


def test_two_instances_share_one_job_and_its_counters(start_server, bucket_name):
    a, b = two_instances(start_server)
    arn, ids = start_job(a, bucket_name, 60)
    job_id = job_id_of(arn)
    # Either instance answers for the job, with counters that move while it runs.
    seen = set()
    deadline = time.monotonic() + 90
    while True:
        job = (a if len(seen) % 2 else b).bedrock.get_model_invocation_job(jobIdentifier=arn)
        if job["status"] == "InProgress":
            seen.add(job.get("processedRecordCount", 0))
        if job["status"] == "Completed" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert job["status"] == "Completed", job
    assert any(0 < n < 60 for n in seen), sorted(seen)
    assert (job["processedRecordCount"], job["successRecordCount"]) == (60, 60)
    check_output(a, bucket_name, arn, ids)
    # Both did records, and together exactly the job's.
    on_a, on_b = processed_on(a, job_id), processed_on(b, job_id)
    assert on_a > 0 and on_b > 0, (on_a, on_b)
    assert on_a + on_b == 60, (on_a, on_b)
    listed = b.bedrock.list_model_invocation_jobs()["invocationJobSummaries"]
    assert [j["jobArn"] for j in listed] == [arn]


def test_a_killed_instance_loses_its_chunks_and_the_job_completes_exactly_once(start_server, bucket_name):
    a, b = two_instances(start_server)
    arn, ids = start_job(b, bucket_name, 72)
    job_id = job_id_of(arn)
    wait_until("both instances have done records", lambda: processed_on(a, job_id) >= 3 and processed_on(b, job_id) >= 1)
    a.stop(signal.SIGKILL)
    job = wait_for_status(b.bedrock, arn, {"Completed"}, timeout=90)
    assert (job["processedRecordCount"], job["successRecordCount"]) == (72, 72), job
    check_output(b, bucket_name, arn, ids)


def test_an_instance_paused_past_its_lease_has_its_late_commit_refused(start_server, bucket_name):
    a, b = two_instances(start_server)
    # Enough chunks that the pause lands inside one of a's, not after the last.
    arn, ids = start_job(b, bucket_name, 96)
    job_id = job_id_of(arn)
    # Paused while it holds a chunk with records in flight.
    wait_until(
        "instance a has records in flight",
        lambda: metric_sum(a.url, "batchd_records_in_flight", job_id=job_id) > 0,
    )
    a.proc.popen.send_signal(signal.SIGSTOP)
    try:
        job = wait_for_status(b.bedrock, arn, {"Completed"}, timeout=90)
    finally:
        a.proc.popen.send_signal(signal.SIGCONT)
    assert (job["processedRecordCount"], job["successRecordCount"]) == (96, 96), job
    wait_until(
        "instance a's late commit is refused",
        lambda: metric_sum(a.url, "batchd_chunk_commits_refused_total") >= 1,
        timeout=30,
    )
    # Nothing it wrote late reached the output, the counters or the parts.
    check_output(b, bucket_name, arn, ids)
    again = a.bedrock.get_model_invocation_job(jobIdentifier=arn)
    assert (again["status"], again["processedRecordCount"]) == ("Completed", 96)


def test_an_openai_batch_is_shared_and_answered_by_either_instance(start_server, bucket_name):
    # The uploads live where both instances read them: the shared S3 store.
    a, b = two_instances(start_server, openai={"files_location": f"s3://{bucket_name}/files/"})
    a.buckets.create(bucket_name)
    on_a, on_b = (openai.OpenAI(base_url=f"{s.url}/v1", api_key="test", max_retries=0, timeout=30) for s in (a, b))
    n = 36
    lines = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": SLOW_MODEL, "messages": [{"role": "user", "content": f"hello {i}"}], "max_tokens": 8},
        }
        for i in range(n)
    ]
    data = ("\n".join(json.dumps(line) for line in lines) + "\n").encode()
    file_id = on_a.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch").id
    batch = on_b.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 90
    while (batch := on_a.batches.retrieve(batch.id)).status not in {"completed", "failed", "expired", "cancelled"}:
        assert time.monotonic() < deadline, batch
        time.sleep(0.1)
    assert batch.status == "completed", batch
    assert (batch.request_counts.completed, batch.request_counts.failed) == (n, 0)
    out = [json.loads(line) for line in on_b.files.content(batch.output_file_id).text.splitlines()]
    assert [line["custom_id"] for line in out] == [f"req-{i}" for i in range(n)]
    assert batch.error_file_id is None
    assert [x.id for x in on_b.batches.list().data] == [batch.id]
    # Its chunks ran on both instances, each record once, and their parts are gone.
    job_id = batch.id.removeprefix("batch_")
    on_a_count, on_b_count = processed_on(a, job_id), processed_on(b, job_id)
    assert on_a_count > 0 and on_b_count > 0, (on_a_count, on_b_count)
    assert on_a_count + on_b_count == n, (on_a_count, on_b_count)
    wait_until(
        "the parts are removed",
        lambda: not [k for k in a.buckets.keys(bucket_name, "files/") if ".parts/" in k],
        timeout=10,
    )


def create_batch_job(creator, starter, bucket_name: str, n: int, model: str) -> tuple[str, list[str]]:
    """A batch job over `n` records in `s3://bucket/batch/in/`, created on one instance and
    started on another; its id and the records' ids."""
    creator.buckets.create(bucket_name)
    body, ids = records(n)
    creator.buckets.put(bucket_name, "batch/in/items.jsonl", body)
    status, _, job = http_json(
        "POST",
        f"{creator.url}/batch-inference-jobs",
        {
            "name": unique("cluster-batch"),
            "modelId": model,
            "inputConfiguration": {"inputLocation": f"s3://{bucket_name}/batch/in/", "inputFormat": "JSONL"},
            "outputConfiguration": {"outputLocation": f"s3://{bucket_name}/batch/out/", "outputFormat": "JSONL"},
        },
    )
    assert status == 200, job
    status, _, started = http_json("POST", f"{starter.url}/batch-inference-jobs/{job['jobId']}/start", {})
    assert status == 200, started
    return job["jobId"], ids


def test_a_batch_job_is_created_started_and_read_on_different_instances(start_server, bucket_name):
    a, b = two_instances(start_server)
    job_id, _ = create_batch_job(a, b, bucket_name, 8, FAST_MODEL)

    def ended():
        _, _, job = http_json("GET", f"{a.url}/batch-inference-jobs/{job_id}")
        return job if job["status"] in {"COMPLETED", "FAILED", "STOPPED"} else None

    job = wait_until("the batch job ends", ended)
    assert (job["status"], job["processedItems"], job["totalItems"]) == ("COMPLETED", 8, 8), job
    _, _, page = http_json("GET", f"{b.url}/batch-inference-jobs")
    assert [j["jobId"] for j in page["jobs"]] == [job_id]
    assert a.buckets.keys(bucket_name, f"batch/out/{job_id}/"), "no result file"


def test_a_batch_job_paused_past_its_lease_is_finished_elsewhere_and_the_late_run_writes_nothing(
    start_server, bucket_name
):
    # A batch job runs whole under its job lease; its holder is paused with records in
    # flight, past the lease, and the other instance resumes it from its checkpoint.
    a, b = two_instances(start_server)
    # About 12 s of work at two records at a time: the pause lands well before the end even
    # when a loaded machine is slow to see the first records done.
    n = 120
    job_id, ids = create_batch_job(a, a, bucket_name, n, SLOW_MODEL)

    def holder():
        for server, other in ((a, b), (b, a)):
            if metric_sum(server.url, "batchd_records_in_flight", job_id=job_id) > 0:
                return server, other
        return None

    paused, other = wait_until("an instance runs the batch job", holder)
    # Some of its output is committed before the pause (object-store parts every 5 s).
    wait_until("records done before the pause", lambda: processed_on(paused, job_id) >= 6)
    paused.proc.popen.send_signal(signal.SIGSTOP)
    done_before = http_json("GET", f"{other.url}/batch-inference-jobs/{job_id}")[2]
    assert done_before["status"] == "IN_PROGRESS" and done_before["processedItems"] < n, done_before
    try:

        def ended():
            _, _, job = http_json("GET", f"{other.url}/batch-inference-jobs/{job_id}")
            return job if job["status"] in {"COMPLETED", "FAILED", "STOPPED"} else None

        job = wait_until("the other instance finishes the batch job", ended, timeout=90)
    finally:
        paused.proc.popen.send_signal(signal.SIGCONT)
    assert (job["status"], job["processedItems"], job["totalItems"]) == ("COMPLETED", n, n), job
    assert processed_on(other, job_id) > 0
    # The woken instance finds its lease run out (at its next write, or its keeper's next
    # renewal, whichever comes first) and writes nothing more.
    wait_until(
        "the woken run gives up",
        lambda: any(
            m in paused.proc.logs(tail=1_000_000)
            for m in ("lease ran out before this write", "job lease lost to another instance")
        ),
        timeout=30,
    )
    time.sleep(1)
    # Nothing of the late run is left beside the output: no part object it put after waking.
    assert not [k for k in a.buckets.keys(bucket_name, "batch/out/") if ".part-" in k], a.buckets.keys(bucket_name, "batch/out/")
    results = parse_jsonl(other.buckets.get(bucket_name, f"batch/out/{job_id}/items.jsonl"))
    assert [r["id"] for r in results] == ids, [r["id"] for r in results]
    _, _, again = http_json("GET", f"{paused.url}/batch-inference-jobs/{job_id}")
    assert (again["status"], again["processedItems"]) == ("COMPLETED", n), again
