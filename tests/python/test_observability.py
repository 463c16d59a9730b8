"""Watching jobs while they run: live counters on every API (S3 jobs too, whose checkpoints
come only every 5 s), the Prometheus `/metrics` parsed by `prometheus_client`, the job events
webhook (a receiver that refuses the first deliveries), and `--log-format json`."""

from __future__ import annotations

import http.server
import json
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import (
    FAIL_MARKER,
    FAST_MODEL,
    SLOW_MODEL,
    converse_line,
    create_job,
    http_json,
    job_id_of,
    read_manifest,
    records,
    start_fake,
    unique,
    wait_for_status,
)
from test_openai_batches import chat_lines, upload
from test_openai_batches import client as openai_client
from test_openai_batches import wait as openai_wait

# ~10 records/s on the slow model: 30 records run ~3 s, under the 5 s between S3 checkpoints,
# so only live counters can show the job's progress.
N_LIVE = 30


def watch(get, running: set[str], ended: set[str], timeout: float = 60):
    """Polls `get()` -> (status, processed, total) every 50 ms until an ended status; returns
    the statuses seen and the processed counts seen while running."""
    seen, statuses = [], []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, processed, total = get()
        if not statuses or statuses[-1] != status:
            statuses.append(status)
        if status in ended:
            return statuses, seen
        if status in running and total:
            seen.append(processed)
        time.sleep(0.05)
    raise AssertionError(f"still {statuses[-1]} after {timeout}s")


def assert_live(statuses, seen, n, last):
    assert statuses[-1] == last, statuses
    partial = sorted({p for p in seen if 0 < p < n})
    # Many distinct values between 0 and n: the counters move as records are written, not
    # at checkpoints (a 3 s S3 job has none before its end).
    assert len(partial) >= 5, f"processed counts seen while running: {seen}"
    assert seen == sorted(seen), f"counters went backwards: {seen}"


def test_live_counters_in_every_api_for_s3_jobs(start_server, moto, bucket_name):
    moto.s3().create_bucket(Bucket=bucket_name)
    server = start_server("s3", overrides={"openai": {"files_location": f"s3://{bucket_name}/files/"}})
    b = server.buckets
    body, _ = records(N_LIVE)

    # Bedrock: Get and List.
    in_uri = b.put(bucket_name, "bedrock/in.jsonl", body)
    arn = create_job(server.bedrock, unique("live"), in_uri, f"s3://{bucket_name}/bedrock-out/", model=SLOW_MODEL)
    listed = []

    def bedrock_get():
        job = server.bedrock.get_model_invocation_job(jobIdentifier=arn)
        summary = server.bedrock.list_model_invocation_jobs(nameContains=job["jobName"])["invocationJobSummaries"][0]
        if job["status"] == "InProgress":
            listed.append(summary["processedRecordCount"])
        return job["status"], job["processedRecordCount"], job["totalRecordCount"]

    statuses, seen = watch(bedrock_get, {"InProgress"}, {"Completed", "Failed", "Stopped"})
    assert_live(statuses, seen, N_LIVE, "Completed")
    assert any(0 < p < N_LIVE for p in listed), f"List never showed live counters: {listed}"

    # The batch-job API: GET one and GET the list.
    b.put(bucket_name, "batch/in/items.jsonl", body)
    status, _, job = http_json(
        "POST",
        f"{server.url}/batch-inference-jobs",
        {
            "name": unique("live-batch"),
            "modelId": SLOW_MODEL,
            # Two items at a time, as the slow model takes them: the counters count records
            # written in input order, so many items in flight would finish out of order and
            # move them in jumps.
            "inputConfiguration": {
                "inputLocation": f"s3://{bucket_name}/batch/in/",
                "inputFormat": "JSONL",
                "batchSize": 2,
            },
            "outputConfiguration": {"outputLocation": f"s3://{bucket_name}/batch/out/", "outputFormat": "JSONL"},
            "jobConfiguration": {"maxConcurrentBatches": 1},
        },
    )
    assert status == 200, job
    job_id = job["jobId"]
    status, _, started = http_json("POST", f"{server.url}/batch-inference-jobs/{job_id}/start", {})
    assert status == 200, started
    listed = []

    def batch_get():
        _, _, job = http_json("GET", f"{server.url}/batch-inference-jobs/{job_id}")
        _, _, page = http_json("GET", f"{server.url}/batch-inference-jobs")
        mine = [j for j in page["jobs"] if j["jobId"] == job_id]
        if job["status"] == "IN_PROGRESS" and mine:
            listed.append(mine[0]["processedItems"])
        return job["status"], job["processedItems"], job["totalItems"]

    statuses, seen = watch(batch_get, {"IN_PROGRESS"}, {"COMPLETED", "FAILED", "STOPPED"})
    assert_live(statuses, seen, N_LIVE, "COMPLETED")
    assert any(0 < p < N_LIVE for p in listed), f"List never showed live counters: {listed}"

    # OpenAI batches (files on S3): retrieve and list.
    c = openai_client(server)
    batch = c.batches.create(
        input_file_id=upload(c, chat_lines(N_LIVE, model=SLOW_MODEL)),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    listed = []

    def openai_get():
        got = c.batches.retrieve(batch.id)
        mine = [x for x in c.batches.list(limit=5).data if x.id == batch.id]
        counts = got.request_counts
        if got.status == "in_progress" and mine:
            listed.append(mine[0].request_counts.completed + mine[0].request_counts.failed)
        done = counts.completed + counts.failed if counts else 0
        return got.status, done, counts.total if counts else 0

    statuses, seen = watch(openai_get, {"in_progress"}, {"completed", "failed", "cancelled", "expired"})
    assert_live(statuses, seen, N_LIVE, "completed")
    assert any(0 < p < N_LIVE for p in listed), f"List never showed live counters: {listed}"


# ---------------------------------------------------------------------------------------
# Prometheus /metrics


def scrape(url: str, token: str | None = None) -> dict[tuple[str, tuple], float]:
    """Every sample of `GET /metrics`, parsed by prometheus_client: {(name, labels): value}."""
    status, headers, text = http_json("GET", f"{url}/metrics", token=token)
    assert status == 200, text
    assert headers["Content-Type"].startswith("text/plain"), headers
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def rising(samples: dict) -> dict:
    """The samples that may only rise: counters and histogram buckets, counts and sums."""
    return {k: v for k, v in samples.items() if k[0].endswith(("_total", "_bucket", "_count", "_sum"))}


def value(samples: dict, name: str, **labels) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


@pytest.fixture
def throttling_fake(binaries, tmp_path):
    """A backend that answers 429 to a fifth of the calls, 20-40 ms each."""
    f = start_fake(binaries, tmp_path, "fake-429", "--rate-429", "0.2", "--latency-ms", "20", "--latency-jitter-ms", "20")
    yield f
    f.proc.stop()


def test_metrics_rise_during_a_job_and_match_its_manifest(start_server, throttling_fake, bucket_name):
    throttled = "mistral.mistral-large-2402-v1:0"
    server = start_server(
        "local",
        extra_toml=f'[[models]]\nid = "{throttled}"\nbackend = "openai"\nbase_url = "{throttling_fake.base_url}"\nmax_concurrency = 4\n',
    )
    b = server.buckets
    b.create(bucket_name)
    n = 120
    lines = [converse_line(f"r{i:04d}", f"{FAIL_MARKER} {i}" if i % 10 == 0 else f"hello {i}") for i in range(n)]
    fast_arn = create_job(
        server.bedrock, unique("fast"), b.put(bucket_name, "fast/in.jsonl", "\n".join(lines) + "\n"), f"s3://{bucket_name}/out/"
    )
    body, _ = records(n)
    slow_arn = create_job(
        server.bedrock, unique("429"), b.put(bucket_name, "slow/in.jsonl", body), f"s3://{bucket_name}/out/", model=throttled
    )

    scrapes = [scrape(server.url)]
    while True:
        time.sleep(0.2)
        scrapes.append(scrape(server.url))
        statuses = {server.bedrock.get_model_invocation_job(jobIdentifier=a)["status"] for a in (fast_arn, slow_arn)}
        if statuses <= {"Completed", "Failed", "Stopped"}:
            break
        assert len(scrapes) < 600, statuses
    scrapes.append(scrape(server.url))
    assert len(scrapes) >= 5

    # Counters only rise, scrape after scrape (a series never disappears either).
    for before, after in zip(scrapes, scrapes[1:]):
        for key, v in rising(before).items():
            assert key in after, f"{key} vanished"
            assert after[key] >= v, f"{key} fell from {v} to {after[key]}"
    # Some scrape saw the slow job part-way.
    slow_id = job_id_of(slow_arn)
    partway = [value(s, "batchd_records_processed_total", job_id=slow_id) for s in scrapes]
    assert any(0 < p < n for p in partway), partway

    last = scrapes[-1]
    for arn, model in ((fast_arn, FAST_MODEL), (slow_arn, throttled)):
        job_id = job_id_of(arn)
        manifest = read_manifest(b, bucket_name, "out/", job_id)
        got = {
            key: value(last, name, job_id=job_id, model_id=model)
            for key, name in (
                ("processedRecordCount", "batchd_records_processed_total"),
                ("successRecordCount", "batchd_records_succeeded_total"),
                ("errorRecordCount", "batchd_records_failed_total"),
                ("inputTokenCount", "batchd_input_tokens_total"),
                ("outputTokenCount", "batchd_output_tokens_total"),
            )
        }
        assert got == {k: manifest[k] for k in got}, (got, manifest)
        assert value(last, "batchd_records_in_flight", job_id=job_id) == 0
    assert value(last, "batchd_records_failed_total", job_id=job_id_of(fast_arn)) == n // 10

    # Retries by reason, the latency histogram, the adaptive limit, jobs, API requests.
    assert value(last, "batchd_retries_total", model_id=throttled, reason="throttling") > 0
    assert value(last, "batchd_backend_request_duration_seconds_count", model_id=throttled, outcome="ok") == n
    assert value(last, "batchd_backend_request_duration_seconds_count", model_id=throttled, outcome="throttling") > 0
    assert value(last, "batchd_backend_request_duration_seconds_bucket", model_id=throttled, outcome="ok", le="+Inf") == n
    assert 1 <= value(last, "batchd_concurrency_limit", model_id=throttled) <= 4
    assert value(last, "batchd_concurrency_max", model_id=throttled) == 4
    assert value(last, "batchd_jobs", status="InProgress") == 0
    assert value(last, "batchd_job_status_changes_total", status="Completed") == 2
    assert value(last, "batchd_api_requests_total", route="/model-invocation-job/{jobIdentifier}", method="GET", status="200") > 0
    assert value(last, "batchd_api_requests_total", route="/model-invocation-job", method="POST", status="200") == 2
    # The JSON metrics are still there.
    status, _, doc = http_json("GET", f"{server.url}/batchd/metrics")
    assert status == 200 and {m["modelId"] for m in doc["models"]} >= {throttled}


def test_metrics_need_a_key_when_the_server_has_keys(start_server):
    token = "metrics-scraper-token-0123456789"
    server = start_server("local", extra_toml=f'[[auth.tokens]]\ntoken = "{token}"\naccount_id = "111122223333"\n')
    status, _, body = http_json("GET", f"{server.url}/metrics")
    assert status == 403, body
    status, _, body = http_json("GET", f"{server.url}/metrics", token="wrong")
    assert status == 403, body
    samples = scrape(server.url, token=token)
    # The refusals above are counted (auth runs inside the request counter).
    assert value(samples, "batchd_api_requests_total", route="/metrics", status="403") == 2


# ---------------------------------------------------------------------------------------
# the job events webhook


class Receiver:
    """An HTTP server on 127.0.0.1 that answers 500 to the first `fail_first` POSTs."""

    def __init__(self, fail_first: int):
        self.fail_first = fail_first
        self.attempts = 0
        self.events: list[dict] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.attempts += 1
                if outer.attempts <= outer.fail_first:
                    self.send_response(500)
                else:
                    outer.events.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver(fail_first=2)
    yield r
    r.close()


def test_the_webhook_gets_every_status_change_after_two_failures(start_server, receiver, bucket_name):
    server = start_server(
        "local",
        overrides={"events": {"webhook_url": receiver.url, "backoff_base_ms": 50, "backoff_max_ms": 200}},
    )
    b = server.buckets
    b.create(bucket_name)
    body, _ = records(12)
    arn = create_job(server.bedrock, unique("events"), b.put(bucket_name, "in/x.jsonl", body), f"s3://{bucket_name}/out/")
    wait_for_status(server.bedrock, arn, {"Completed"})
    deadline = time.monotonic() + 30
    while not any(e["detail"]["status"] == "Completed" for e in receiver.events):
        assert time.monotonic() < deadline, f"no Completed event: {receiver.events}"
        time.sleep(0.05)

    # The first two deliveries failed and were retried: nothing was lost, in order.
    assert receiver.attempts == len(receiver.events) + 2
    statuses = [e["detail"]["status"] for e in receiver.events]
    assert statuses == ["Submitted", "Validating", "Scheduled", "InProgress", "Completed"], statuses
    for e in receiver.events:
        assert e["detail-type"] == "Batch Inference Job State Change"
        assert e["source"] == "aws.bedrock" and e["version"] == "0"
        assert e["resources"] == [arn] and e["detail"]["batchJobArn"] == arn
        assert e["account"] == e["detail"]["accountId"] == arn.split(":")[4]
        assert e["region"] == "us-east-1" and e["time"].endswith("Z")
        assert e["detail"]["batchModelId"] == FAST_MODEL
        assert e["detail"]["inputDataConfig"]["s3InputDataConfig"]["s3Uri"].endswith("in/x.jsonl")
    assert len({e["id"] for e in receiver.events}) == len(receiver.events)
    done = receiver.events[-1]["detail"]
    manifest = read_manifest(b, bucket_name, "out/", job_id_of(arn))
    assert {k: done[k] for k in manifest} == manifest


def test_a_webhook_that_is_down_never_holds_a_job_up(start_server, bucket_name):
    # Nothing listens there: every delivery fails and is retried, while the job runs on.
    server = start_server("local", overrides={"events": {"webhook_url": "http://127.0.0.1:9/hook", "queue_size": 2}})
    b = server.buckets
    b.create(bucket_name)
    body, _ = records(20)
    arn = create_job(server.bedrock, unique("down"), b.put(bucket_name, "in/x.jsonl", body), f"s3://{bucket_name}/out/")
    wait_for_status(server.bedrock, arn, {"Completed"}, timeout=20)
    time.sleep(0.5)
    # A queue of two: the later changes were dropped, each with a log line.
    server.stop()
    assert "job event dropped" in server.proc.stderr_path.read_text()


# ---------------------------------------------------------------------------------------
# logs


def test_json_logs_carry_the_job_and_each_attempt(start_server, bucket_name):
    server = start_server("local", env={"BATCHD_LOG": "batchd_engine=debug"}, args=("--log-format", "json"))
    b = server.buckets
    b.create(bucket_name)
    lines = [converse_line("ok-1", "hello"), converse_line("bad-1", f"{FAIL_MARKER} x")]
    arn = create_job(server.bedrock, unique("logs"), b.put(bucket_name, "in/x.jsonl", "\n".join(lines) + "\n"), f"s3://{bucket_name}/out/")
    wait_for_status(server.bedrock, arn, {"Completed"})
    server.stop()
    logs = [json.loads(line) for line in server.proc.stderr_path.read_text().splitlines() if line.startswith("{")]
    attempts = {}
    for entry in logs:
        spans = {s["name"]: s for s in entry.get("spans", [])}
        if "attempt" in spans:
            attempts[spans["attempt"]["record_id"]] = (entry, spans)
    assert set(attempts) == {"ok-1", "bad-1"}, logs[-5:]
    entry, spans = attempts["bad-1"]
    assert spans["job"]["job_id"] == job_id_of(arn) and spans["job"]["model_id"] == FAST_MODEL
    assert spans["attempt"]["attempt"] == 1 and spans["attempt"]["model_id"] == FAST_MODEL
    assert entry["fields"]["message"] == "attempt failed"
    assert entry["fields"]["error_class"] == "client_error" and entry["fields"]["status"] == 400
    assert isinstance(entry["fields"]["latency_ms"], int)
    entry, _ = attempts["ok-1"]
    assert entry["fields"]["message"] == "attempt answered"
