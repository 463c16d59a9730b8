"""ListModelInvocationJobs through boto3: its paginator, both sort orders, every filter. One
server of its own, so the list holds exactly the jobs made here."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from conftest import SHARED_DATA, create_job, records, wait_for_status

N_OK = 6


@pytest.fixture(scope="module")
def listed(request, tmp_path_factory):
    """A server with N_OK Completed jobs `lst-ok-<i>` and one Failed `lst-bad`, created in
    this order: (server, jobs as Get returns them, in creation order)."""
    from conftest import _factory

    factory = _factory(
        request,
        request.getfixturevalue("binaries"),
        request.getfixturevalue("fake"),
        request.getfixturevalue("slow_fake"),
        tmp_path_factory.mktemp("list"),
    )
    server = factory.start("s3")
    bucket = "list-jobs"
    server.buckets.create(bucket)
    body, _ = records(3)
    ok_uri = server.buckets.put(bucket, "in/ok.jsonl", body)
    bad_uri = server.buckets.put(bucket, "in/bad.jsonl", (SHARED_DATA / "converse-defects.jsonl").read_bytes())
    arns = []
    for i in range(N_OK):
        if i == 3:
            arns.append(create_job(server.bedrock, "lst-bad", bad_uri, f"s3://{bucket}/out/"))
            time.sleep(0.02)
        arns.append(create_job(server.bedrock, f"lst-ok-{i}", ok_uri, f"s3://{bucket}/out/"))
        # Distinct submit times, a few milliseconds apart at least.
        time.sleep(0.02)
    jobs = [wait_for_status(server.bedrock, arn) for arn in arns]
    yield server, jobs
    factory.stop_all()


def arns(summaries) -> list[str]:
    return [s["jobArn"] for s in summaries]


def paginate(client, **params) -> tuple[list[dict], list[list[dict]]]:
    pages = list(client.get_paginator("list_model_invocation_jobs").paginate(**params))
    items = [s for page in pages for s in page["invocationJobSummaries"]]
    return items, pages


def test_jobs_are_in_the_expected_states(listed):
    _, jobs = listed
    assert [j["status"] for j in jobs] == ["Completed"] * 3 + ["Failed"] + ["Completed"] * 3, [
        (j["jobName"], j["status"], j.get("message")) for j in jobs
    ]
    times = [j["submitTime"] for j in jobs]
    assert times == sorted(times) and len(set(times)) == len(times)


@pytest.mark.parametrize("order", ["Ascending", "Descending"])
def test_paginator_with_max_results_2_sees_every_job_once_in_submit_order(listed, order):
    server, jobs = listed
    items, pages = paginate(
        server.bedrock, sortBy="CreationTime", sortOrder=order, PaginationConfig={"PageSize": 2}
    )
    assert len(pages) == 4  # 7 jobs, 2 a page
    for page in pages[:-1]:
        assert len(page["invocationJobSummaries"]) == 2
        assert page["nextToken"]
    assert "nextToken" not in pages[-1]
    assert len(set(arns(items))) == len(items), "duplicates across pages"
    expected = arns(jobs) if order == "Ascending" else arns(reversed(jobs))
    assert arns(items) == expected
    times = [s["submitTime"] for s in items]
    assert times == sorted(times, reverse=order == "Descending")
    # One call with a large page lists the same.
    whole = server.bedrock.list_model_invocation_jobs(sortOrder=order, maxResults=1000)
    assert arns(whole["invocationJobSummaries"]) == expected
    assert "nextToken" not in whole


def test_manual_next_token_pages(listed):
    server, jobs = listed
    seen = []
    token = None
    calls = 0
    while True:
        kwargs = {"maxResults": 2, "sortOrder": "Ascending"}
        if token:
            kwargs["nextToken"] = token
        page = server.bedrock.list_model_invocation_jobs(**kwargs)
        calls += 1
        seen += arns(page["invocationJobSummaries"])
        token = page.get("nextToken")
        if not token:
            break
    assert calls == 4
    assert seen == arns(jobs)


def test_summaries_carry_the_job_fields(listed):
    server, jobs = listed
    summaries = server.bedrock.list_model_invocation_jobs(sortOrder="Ascending")["invocationJobSummaries"]
    by_arn = {s["jobArn"]: s for s in summaries}
    for job in jobs:
        s = by_arn[job["jobArn"]]
        for key in (
            "jobName",
            "modelId",
            "status",
            "roleArn",
            "clientRequestToken",
            "inputDataConfig",
            "outputDataConfig",
            "modelInvocationType",
            "timeoutDurationInHours",
            "totalRecordCount",
            "processedRecordCount",
            "successRecordCount",
            "errorRecordCount",
        ):
            assert s[key] == job[key], key
        for key in ("submitTime", "lastModifiedTime", "endTime", "jobExpirationTime"):
            assert isinstance(s[key], dt.datetime) and s[key] == job[key], key
        if job["status"] == "Failed":
            assert s["message"] == job["message"]


def test_status_filter(listed):
    server, jobs = listed
    completed, _ = paginate(server.bedrock, statusEquals="Completed", sortOrder="Ascending", PaginationConfig={"PageSize": 2})
    assert arns(completed) == [j["jobArn"] for j in jobs if j["status"] == "Completed"]
    failed = server.bedrock.list_model_invocation_jobs(statusEquals="Failed")["invocationJobSummaries"]
    assert arns(failed) == [jobs[3]["jobArn"]]
    for status in ("InProgress", "Submitted", "Stopped", "Expired"):
        assert server.bedrock.list_model_invocation_jobs(statusEquals=status)["invocationJobSummaries"] == []


def test_name_filter(listed):
    server, jobs = listed
    ok, _ = paginate(server.bedrock, nameContains="lst-ok", sortOrder="Ascending", PaginationConfig={"PageSize": 2})
    assert [s["jobName"] for s in ok] == [f"lst-ok-{i}" for i in range(N_OK)]
    assert arns(server.bedrock.list_model_invocation_jobs(nameContains="ok-4")["invocationJobSummaries"]) == [
        jobs[5]["jobArn"]
    ]
    assert len(server.bedrock.list_model_invocation_jobs(nameContains="lst")["invocationJobSummaries"]) == 7
    assert server.bedrock.list_model_invocation_jobs(nameContains="nothing-like-it")["invocationJobSummaries"] == []
    # Filters combine.
    both = server.bedrock.list_model_invocation_jobs(nameContains="lst", statusEquals="Failed")
    assert [s["jobName"] for s in both["invocationJobSummaries"]] == ["lst-bad"]


def midpoint(a: dt.datetime, b: dt.datetime) -> dt.datetime:
    return a + (b - a) / 2


def test_submit_time_filters(listed):
    server, jobs = listed
    t = [j["submitTime"] for j in jobs]
    cut = midpoint(t[2], t[3])
    after, _ = paginate(server.bedrock, submitTimeAfter=cut, sortOrder="Ascending", PaginationConfig={"PageSize": 2})
    assert arns(after) == arns(jobs[3:])
    before, _ = paginate(server.bedrock, submitTimeBefore=cut, sortOrder="Ascending", PaginationConfig={"PageSize": 2})
    assert arns(before) == arns(jobs[:3])
    window = server.bedrock.list_model_invocation_jobs(
        submitTimeAfter=midpoint(t[0], t[1]), submitTimeBefore=midpoint(t[5], t[6]), sortOrder="Descending"
    )
    assert arns(window["invocationJobSummaries"]) == arns(reversed(jobs[1:6]))
    # Far past / future bounds.
    assert server.bedrock.list_model_invocation_jobs(submitTimeAfter=t[-1] + dt.timedelta(hours=1))[
        "invocationJobSummaries"
    ] == []
    assert len(
        server.bedrock.list_model_invocation_jobs(submitTimeAfter=t[0] - dt.timedelta(hours=1))["invocationJobSummaries"]
    ) == 7
    # Time filters with status and pagination together.
    combined, pages = paginate(
        server.bedrock,
        submitTimeAfter=cut,
        statusEquals="Completed",
        sortOrder="Descending",
        PaginationConfig={"PageSize": 2},
    )
    assert arns(combined) == arns(reversed(jobs[4:]))
    assert len(pages) == 2
