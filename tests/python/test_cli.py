"""The AWS CLI (`aws bedrock ... --endpoint-url`) against `batchd serve`, unchanged."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from conftest import (
    AWS_CLI,
    FAST_MODEL,
    JOB_ARN_RE,
    ROLE_ARN,
    SHARED_DATA,
    SLOW_MODEL,
    clean_env,
    job_id_of,
    records,
    unique,
    wait_for_status,
)


@pytest.fixture
def aws_cli(s3_server, tmp_path):
    """Runs `aws bedrock <args>` on the module's S3-mode server; returns the CompletedProcess
    with `.json` set to the parsed stdout (or None)."""
    config = tmp_path / "aws-config"
    credentials = tmp_path / "aws-credentials"
    config.write_text("")
    credentials.write_text("")
    env = clean_env(
        AWS_CONFIG_FILE=str(config),
        AWS_SHARED_CREDENTIALS_FILE=str(credentials),
        AWS_PAGER="",
    )

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = [
            str(AWS_CLI),
            "bedrock",
            *args,
            "--endpoint-url",
            s3_server.url,
            "--region",
            "us-east-1",
            "--output",
            "json",
        ]
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        if check:
            assert result.returncode == 0, f"{argv}\nexit {result.returncode}\n{result.stderr}"
        result.json = json.loads(result.stdout) if result.stdout.strip() else None
        return result

    return run


def create_args(name: str, in_uri: str, out_uri: str, model: str = FAST_MODEL) -> list[str]:
    return [
        "create-model-invocation-job",
        "--job-name",
        name,
        "--role-arn",
        ROLE_ARN,
        "--model-id",
        model,
        "--model-invocation-type",
        "Converse",
        "--input-data-config",
        json.dumps({"s3InputDataConfig": {"s3Uri": in_uri, "s3InputFormat": "JSONL"}}),
        "--output-data-config",
        json.dumps({"s3OutputDataConfig": {"s3Uri": out_uri}}),
    ]


def test_cli_create_get_stop(aws_cli, s3_server, bucket_name):
    b = s3_server.buckets
    b.create(bucket_name)
    body, _ = records(60)
    in_uri = b.put(bucket_name, "in/slow.jsonl", body)
    name = unique("cli")
    created = aws_cli(*create_args(name, in_uri, f"s3://{bucket_name}/out/", model=SLOW_MODEL), "--timeout-duration-in-hours", "72")
    arn = created.json["jobArn"]
    assert re.match(JOB_ARN_RE, arn), arn

    got = aws_cli("get-model-invocation-job", "--job-identifier", arn).json
    assert got["jobArn"] == arn and got["jobName"] == name
    assert got["modelId"] == SLOW_MODEL
    assert got["modelInvocationType"] == "Converse"
    assert got["timeoutDurationInHours"] == 72
    assert got["inputDataConfig"] == {"s3InputDataConfig": {"s3Uri": in_uri, "s3InputFormat": "JSONL"}}
    assert got["status"] in {"Submitted", "Validating", "Scheduled", "InProgress"}
    # ISO-8601 timestamps come through as text.
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", got["submitTime"]), got["submitTime"]

    wait_for_status(s3_server.bedrock, arn, {"InProgress"}, timeout=30, interval=0.05)
    stopped = aws_cli("stop-model-invocation-job", "--job-identifier", job_id_of(arn))
    assert stopped.returncode == 0
    wait_for_status(s3_server.bedrock, arn, {"Stopped"}, timeout=30)
    got = aws_cli("get-model-invocation-job", "--job-identifier", job_id_of(arn)).json
    assert got["status"] == "Stopped"
    assert got["processedRecordCount"] < got["totalRecordCount"] == 60
    assert "endTime" in got


def test_cli_list_with_max_results_and_its_own_pagination(aws_cli, s3_server, bucket_name):
    b = s3_server.buckets
    b.create(bucket_name)
    in_uri = b.put(bucket_name, "in/basic.jsonl", (SHARED_DATA / "converse-basic.jsonl").read_bytes())
    tag = unique("clilist")
    arns = []
    for i in range(3):
        arns.append(aws_cli(*create_args(f"{tag}-{i}", in_uri, f"s3://{bucket_name}/out/")).json["jobArn"])
    for arn in arns:
        wait_for_status(s3_server.bedrock, arn, {"Completed"})

    # --max-results: one page of the API, its nextToken given back as it came.
    first = aws_cli(
        "list-model-invocation-jobs", "--name-contains", tag, "--sort-order", "Ascending", "--max-results", "2"
    ).json
    assert [s["jobArn"] for s in first["invocationJobSummaries"]] == arns[:2]
    assert first["nextToken"]
    rest = aws_cli(
        "list-model-invocation-jobs",
        "--name-contains",
        tag,
        "--sort-order",
        "Ascending",
        "--max-results",
        "2",
        "--next-token",
        first["nextToken"],
    ).json
    assert [s["jobArn"] for s in rest["invocationJobSummaries"]] == arns[2:]
    assert "nextToken" not in rest

    # The CLI's own pagination: pages of one, all gathered.
    everything = aws_cli(
        "list-model-invocation-jobs", "--name-contains", tag, "--sort-order", "Descending", "--page-size", "1"
    ).json
    assert [s["jobArn"] for s in everything["invocationJobSummaries"]] == arns[::-1]
    assert all(s["status"] == "Completed" and s["processedRecordCount"] == 10 for s in everything["invocationJobSummaries"])

    # --max-items / --starting-token on top of pages of one.
    head = aws_cli(
        "list-model-invocation-jobs", "--name-contains", tag, "--page-size", "1", "--max-items", "2", "--sort-order", "Ascending"
    ).json
    assert [s["jobArn"] for s in head["invocationJobSummaries"]] == arns[:2]
    tail = aws_cli(
        "list-model-invocation-jobs",
        "--name-contains",
        tag,
        "--page-size",
        "1",
        "--max-items",
        "2",
        "--sort-order",
        "Ascending",
        "--starting-token",
        head["NextToken"],
    ).json
    assert [s["jobArn"] for s in tail["invocationJobSummaries"]] == arns[2:]

    filtered = aws_cli("list-model-invocation-jobs", "--name-contains", tag, "--status-equals", "Failed").json
    assert filtered["invocationJobSummaries"] == []


def test_cli_errors(aws_cli, s3_server, bucket_name):
    # A service error: exit 254 (CLI v2) or 255 (CLI v1), the error code on stderr.
    missing = aws_cli("get-model-invocation-job", "--job-identifier", "zzzzzzzzzzzz", check=False)
    assert missing.returncode in (254, 255), missing
    assert "ResourceNotFoundException" in missing.stderr
    assert missing.stdout == ""

    bad = aws_cli(*create_args("bad name!", f"s3://{bucket_name}/in/", f"s3://{bucket_name}/out/"), check=False)
    assert bad.returncode in (254, 255), bad
    assert "ValidationException" in bad.stderr and "jobName" in bad.stderr

    stop_missing = aws_cli("stop-model-invocation-job", "--job-identifier", "zzzzzzzzzzzz", check=False)
    assert stop_missing.returncode in (254, 255)
    assert "ResourceNotFoundException" in stop_missing.stderr
