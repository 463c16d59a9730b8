"""Requests that race each other: concurrent creates, where the jobName rule and the per-model
limit must hold whatever the timing.

Each test repeats its race a bounded number of rounds and fails on the first round that breaks
the rule, so a race that is still there shows up reliably and a fixed one passes quickly."""

from __future__ import annotations

import threading

import pytest
from botocore.exceptions import ClientError
from conftest import SLOW_MODEL, create_job, records, unique, wait_for_status

THREADS = 8
# Each racing job runs on the slow model for about half a second: a job that ended before the
# last request of its round arrived (a thread started late on a loaded machine) would free its
# name or its model's slot, and the round would rightly create a second job.
RECORDS = 5


def race(clients, make) -> list[tuple[str, str]]:
    """Runs `make(client, i)` on every client at once; ("ok", jobArn) or (error code, message)."""
    barrier = threading.Barrier(len(clients))
    results: list = [None] * len(clients)

    def go(i):
        barrier.wait()
        try:
            results[i] = ("ok", make(clients[i], i))
        except ClientError as e:
            results[i] = (e.response["Error"]["Code"], e.response["Error"]["Message"])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def warm_clients(server, n: int = THREADS):
    clients = [server.client() for _ in range(n)]
    for c in clients:
        c.list_model_invocation_jobs(maxResults=1)  # connections open before the race
    return clients


@pytest.mark.parametrize(
    "limits, same_name, refusal, rule",
    [
        ({}, True, "ConflictException", "active jobs named one name"),
        (
            {"max_jobs_per_model": 1},
            False,
            "ServiceQuotaExceededException",
            "active jobs of one model with max_jobs_per_model = 1",
        ),
    ],
    ids=["one-name", "max-jobs-per-model"],
)
def test_concurrent_creates_make_one_active_job(start_server, bucket_name, limits, same_name, refusal, rule):
    """Racing creates of one name, or of one model limited to one job, make exactly one active
    job; every other create is refused."""
    server = start_server("s3", {"limits": limits} if limits else None)
    b = server.buckets
    b.create(bucket_name)
    body, _ = records(RECORDS)
    in_uri = b.put(bucket_name, "in/one.jsonl", body)
    clients = warm_clients(server)
    for _ in range(12):
        name = unique("same")
        job_name = (lambda: name) if same_name else (lambda: unique("quota"))
        results = race(clients, lambda c, i: create_job(c, job_name(), in_uri, f"s3://{bucket_name}/out/", SLOW_MODEL))
        created = [r[1] for r in results if r[0] == "ok"]
        assert all(r[0] in ("ok", refusal) for r in results), results
        assert len(created) == 1, f"{len(created)} {rule}: {results}"
        for arn in created:
            wait_for_status(server.bedrock, arn, {"Completed"})
