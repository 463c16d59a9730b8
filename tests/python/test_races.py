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


def test_concurrent_creates_with_one_name_make_one_active_job(start_server, bucket_name):
    server = start_server("s3")
    b = server.buckets
    b.create(bucket_name)
    body, _ = records(RECORDS)
    in_uri = b.put(bucket_name, "in/one.jsonl", body)
    clients = warm_clients(server)
    for _ in range(12):
        name = unique("same")
        results = race(clients, lambda c, i: create_job(c, name, in_uri, f"s3://{bucket_name}/out/", SLOW_MODEL))
        created = [r[1] for r in results if r[0] == "ok"]
        assert all(r[0] in ("ok", "ConflictException") for r in results), results
        assert len(created) == 1, f"{len(created)} active jobs named {name}: {results}"
        for arn in created:
            wait_for_status(server.bedrock, arn, {"Completed"})


def test_concurrent_creates_respect_max_jobs_per_model(start_server, bucket_name):
    server = start_server("s3", {"limits": {"max_jobs_per_model": 1}})
    b = server.buckets
    b.create(bucket_name)
    body, _ = records(RECORDS)
    in_uri = b.put(bucket_name, "in/one.jsonl", body)
    clients = warm_clients(server)
    for _ in range(12):
        results = race(clients, lambda c, i: create_job(c, unique("quota"), in_uri, f"s3://{bucket_name}/out/", SLOW_MODEL))
        created = [r[1] for r in results if r[0] == "ok"]
        assert all(r[0] in ("ok", "ServiceQuotaExceededException") for r in results), results
        assert len(created) == 1, f"{len(created)} active jobs of one model with max_jobs_per_model = 1: {results}"
        for arn in created:
            wait_for_status(server.bedrock, arn, {"Completed"})
