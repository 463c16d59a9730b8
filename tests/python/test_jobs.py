"""Converse jobs end to end through boto3: create, get, outputs and manifest read back, in
both storage modes (moto S3 and local buckets)."""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
import subprocess
import time

import pytest
from conftest import (
    FAIL_MARKER,
    FAST_MODEL,
    JOB_ARN_RE,
    ROLE_ARN,
    SHARED_DATA,
    SLOW_MODEL,
    check_output_line,
    converse_line,
    create_job,
    expected_manifest,
    job_id_of,
    parse_jsonl,
    read_manifest,
    records,
    unique,
    wait_for_status,
)

MODES = ["s3", "local"]


def input_records(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


@pytest.mark.parametrize("mode", MODES)
def test_converse_job_end_to_end(module_servers, bucket_name, mode):
    server = module_servers(mode)
    b = server.buckets
    b.create(bucket_name)
    data = (SHARED_DATA / "converse-basic.jsonl").read_bytes()
    in_uri = b.put(bucket_name, "input/converse-basic.jsonl", data)
    out_uri = f"s3://{bucket_name}/output/"
    name = unique("e2e")
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)

    response = server.bedrock.create_model_invocation_job(
        jobName=name,
        roleArn=ROLE_ARN,
        modelId=FAST_MODEL,
        inputDataConfig={"s3InputDataConfig": {"s3Uri": in_uri, "s3InputFormat": "JSONL"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": out_uri}},
        timeoutDurationInHours=48,
        modelInvocationType="Converse",
    )
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    arn = response["jobArn"]
    assert re.match(JOB_ARN_RE, arn), arn
    job_id = job_id_of(arn)

    job = wait_for_status(server.bedrock, arn, {"Completed"})
    after = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)
    assert job["jobArn"] == arn
    assert job["jobName"] == name
    assert job["modelId"] == FAST_MODEL
    assert job["roleArn"] == ROLE_ARN
    assert job["status"] == "Completed"
    assert job["modelInvocationType"] == "Converse"
    assert job["inputDataConfig"] == {"s3InputDataConfig": {"s3Uri": in_uri, "s3InputFormat": "JSONL"}}
    assert job["outputDataConfig"] == {"s3OutputDataConfig": {"s3Uri": out_uri}}
    assert job["timeoutDurationInHours"] == 48
    # boto3 auto-fills the idempotency token; the server keeps it.
    assert job["clientRequestToken"]
    for key in ("submitTime", "lastModifiedTime", "endTime", "jobExpirationTime"):
        assert isinstance(job[key], dt.datetime), key
        assert job[key].tzinfo is not None, key
    assert before <= job["submitTime"] <= job["endTime"] <= after
    assert job["submitTime"] <= job["lastModifiedTime"]
    # About submit time + 48 "hours" (an hour is 3600 s in this config).
    expected_expiry = job["submitTime"] + dt.timedelta(hours=48)
    assert abs((job["jobExpirationTime"] - expected_expiry).total_seconds()) < 60
    counts = {k: job[k] for k in ("totalRecordCount", "processedRecordCount", "successRecordCount", "errorRecordCount")}
    assert counts == {"totalRecordCount": 10, "processedRecordCount": 10, "successRecordCount": 10, "errorRecordCount": 0}
    # The job by its id gives the same job.
    by_id = server.bedrock.get_model_invocation_job(jobIdentifier=job_id)
    assert by_id["jobArn"] == arn and by_id["status"] == "Completed"

    keys = b.keys(bucket_name, f"output/{job_id}/")
    assert keys == [f"output/{job_id}/converse-basic.jsonl.out", f"output/{job_id}/manifest.json.out"]
    lines = parse_jsonl(b.get(bucket_name, f"output/{job_id}/converse-basic.jsonl.out"))
    inputs = input_records(data)
    assert [line["recordId"] for line in lines] == [r["recordId"] for r in inputs]
    for line, rec in zip(lines, inputs):
        check_output_line(line, rec)
        assert "modelOutput" in line
        # The fake echoes the prompt.
        prompt = rec["modelInput"]["messages"][-1]["content"][0]["text"]
        assert prompt in line["modelOutput"]["output"]["message"]["content"][0]["text"]
    manifest = read_manifest(b, bucket_name, "output/", job_id)
    assert manifest == expected_manifest(lines, 10)
    assert manifest["inputTokenCount"] > 0 and manifest["outputTokenCount"] > 0


@pytest.mark.parametrize("mode", MODES)
def test_folder_input_with_files_in_sub_folders(module_servers, bucket_name, mode):
    server = module_servers(mode)
    b = server.buckets
    b.create(bucket_name)
    rich = (SHARED_DATA / "converse-rich.jsonl").read_bytes()
    basic = (SHARED_DATA / "converse-basic.jsonl").read_bytes()
    b.put(bucket_name, "in/b/rich.jsonl", rich)
    b.put(bucket_name, "in/a/basic.jsonl", basic)
    b.put(bucket_name, "in/a/notes.txt", b"not an input file\n")
    arn = create_job(server.bedrock, unique("folder"), f"s3://{bucket_name}/in/", f"s3://{bucket_name}/out/")
    job_id = job_id_of(arn)
    job = wait_for_status(server.bedrock, arn, {"Completed"})
    n_rich = len(input_records(rich))
    assert job["totalRecordCount"] == 10 + n_rich
    assert job["processedRecordCount"] == 10 + n_rich
    assert job["errorRecordCount"] == 0

    keys = b.keys(bucket_name, f"out/{job_id}/")
    assert keys == sorted(
        [f"out/{job_id}/a/basic.jsonl.out", f"out/{job_id}/b/rich.jsonl.out", f"out/{job_id}/manifest.json.out"]
    )
    all_lines = []
    for rel, data in (("a/basic.jsonl", basic), ("b/rich.jsonl", rich)):
        lines = parse_jsonl(b.get(bucket_name, f"out/{job_id}/{rel}.out"))
        inputs = input_records(data)
        assert len(lines) == len(inputs), rel
        for line, rec in zip(lines, inputs):
            if "recordId" in rec:
                check_output_line(line, rec)
            else:
                # A record without recordId gets a generated one (11 upper-case alphanumerics).
                assert re.fullmatch(r"[A-Z0-9]{11}", line["recordId"]), line["recordId"]
                check_output_line(line, {**rec, "recordId": line["recordId"]})
        all_lines += lines
    assert read_manifest(b, bucket_name, "out/", job_id) == expected_manifest(all_lines, 10 + n_rich)


@pytest.mark.parametrize(
    "model_id",
    [
        f"arn:aws:bedrock:us-east-1::foundation-model/{FAST_MODEL}",
        f"us.{FAST_MODEL}",
        f"global.{FAST_MODEL}",
        f"arn:aws:bedrock:us-west-2:123456789012:inference-profile/eu.{FAST_MODEL}",
    ],
    ids=["foundation-model-arn", "us-profile", "global-profile", "inference-profile-arn"],
)
def test_every_model_id_form_names_the_model(s3_server, bucket_name, model_id):
    b = s3_server.buckets
    b.create(bucket_name)
    body, ids = records(3)
    in_uri = b.put(bucket_name, "in/x.jsonl", body)
    arn = create_job(s3_server.bedrock, unique("model-form"), in_uri, f"s3://{bucket_name}/out/", model=model_id)
    job = wait_for_status(s3_server.bedrock, arn, {"Completed"})
    assert job["modelId"] == model_id, "Get echoes the id as the caller wrote it"
    lines = parse_jsonl(b.get(bucket_name, f"out/{job_id_of(arn)}/x.jsonl.out"))
    assert [x["recordId"] for x in lines] == ids


def test_record_errors_become_error_lines(s3_server, bucket_name):
    b = s3_server.buckets
    b.create(bucket_name)
    body = "".join(
        converse_line(f"r{i}", f"{FAIL_MARKER} please" if i in (1, 4) else f"hello {i}") + "\n" for i in range(6)
    )
    in_uri = b.put(bucket_name, "in/mixed.jsonl", body)
    arn = create_job(s3_server.bedrock, unique("errlines"), in_uri, f"s3://{bucket_name}/out")
    job_id = job_id_of(arn)
    job = wait_for_status(s3_server.bedrock, arn, {"Completed"})
    assert (job["totalRecordCount"], job["processedRecordCount"], job["successRecordCount"], job["errorRecordCount"]) == (
        6,
        6,
        4,
        2,
    )
    lines = parse_jsonl(b.get(bucket_name, f"out/{job_id}/mixed.jsonl.out"))
    assert [line["recordId"] for line in lines] == [f"r{i}" for i in range(6)]
    inputs = input_records(body.encode())
    for i, (line, rec) in enumerate(zip(lines, inputs)):
        check_output_line(line, rec)
        if i in (1, 4):
            assert line["error"]["errorCode"] == 400, line
        else:
            assert "modelOutput" in line
    assert read_manifest(b, bucket_name, "out/", job_id) == expected_manifest(lines, 6)


# Live counters and output: S3 output parts are written every 5 s, local files committed every
# second, so the S3 job runs longer.
@pytest.mark.parametrize("mode,n", [("s3", 90), ("local", 40)])
def test_live_counters_and_output_while_in_progress(module_servers, bucket_name, mode, n):
    server = module_servers(mode)
    b = server.buckets
    b.create(bucket_name)
    body, ids = records(n)
    in_uri = b.put(bucket_name, "in/live.jsonl", body)
    arn = create_job(server.bedrock, unique("live"), in_uri, f"s3://{bucket_name}/out/", model=SLOW_MODEL)
    job_id = job_id_of(arn)

    seen_partial_counters = False
    seen_live_output = False
    statuses = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = server.bedrock.get_model_invocation_job(jobIdentifier=arn)
        status = job["status"]
        if not statuses or statuses[-1] != status:
            statuses.append(status)
        if status in ("Completed", "Failed", "Stopped", "PartiallyCompleted", "Expired"):
            break
        if status == "InProgress":
            assert job["totalRecordCount"] == n
            processed = job["processedRecordCount"]
            assert job["successRecordCount"] + job["errorRecordCount"] == processed
            if 0 < processed < n:
                seen_partial_counters = True
                # The List summary carries the same live counters.
                summaries = server.bedrock.list_model_invocation_jobs(nameContains=job["jobName"])[
                    "invocationJobSummaries"
                ]
                assert [s["jobArn"] for s in summaries] == [arn]
                assert 0 < summaries[0]["processedRecordCount"] <= n
            if not seen_live_output:
                keys = [k for k in b.keys(bucket_name, f"out/{job_id}/") if not k.endswith("manifest.json.out")]
                written = b"".join(b.get(bucket_name, k) for k in keys)
                if written.count(b"\n") > 0:
                    # Whole lines, in input order, from the first record on.
                    lines = [json.loads(x) for x in written.decode().splitlines()]
                    assert [x["recordId"] for x in lines] == ids[: len(lines)]
                    again = server.bedrock.get_model_invocation_job(jobIdentifier=arn)
                    if again["status"] == "InProgress":
                        seen_live_output = True
        time.sleep(0.2)
    assert statuses[-1] == "Completed", statuses
    assert "InProgress" in statuses, statuses
    assert seen_partial_counters, "never saw InProgress with 0 < processedRecordCount < total"
    assert seen_live_output, "no output line appeared under the job's output prefix while InProgress"
    lines = parse_jsonl(b.get(bucket_name, f"out/{job_id}/live.jsonl.out"))
    assert [x["recordId"] for x in lines] == ids
    # Parts are gone once the job ends.
    assert b.keys(bucket_name, f"out/{job_id}/") == [f"out/{job_id}/live.jsonl.out", f"out/{job_id}/manifest.json.out"]
    assert read_manifest(b, bucket_name, "out/", job_id) == expected_manifest(lines, n)


def test_invoke_model_anthropic_bodies_complete_in_the_native_shape(s3_server, bucket_name, wait_status):
    b = s3_server.buckets
    b.create(bucket_name)
    records = parse_jsonl((SHARED_DATA / "invoke-anthropic.jsonl").read_bytes())
    in_uri = b.put(bucket_name, "in/invoke.jsonl", (SHARED_DATA / "invoke-anthropic.jsonl").read_bytes())
    arn = create_job(
        s3_server.bedrock, unique("invoke"), in_uri, f"s3://{bucket_name}/out/", modelInvocationType="InvokeModel"
    )
    job = s3_server.bedrock.get_model_invocation_job(jobIdentifier=arn)
    assert job["modelInvocationType"] == "InvokeModel"
    job = wait_status(s3_server.bedrock, arn, {"Completed"})
    job_id = arn.rsplit("/", 1)[1]
    lines = parse_jsonl(b.get(bucket_name, f"out/{job_id}/invoke.jsonl.out"))
    assert [x["recordId"] for x in lines] == [r["recordId"] for r in records]
    for line, record in zip(lines, records):
        assert line["modelInput"] == record["modelInput"]
        out = line["modelOutput"]
        # Anthropic Messages response, as InvokeModel returns it.
        assert out["type"] == "message" and out["role"] == "assistant", out
        assert isinstance(out["content"], list) and out["content"][0]["type"] == "text", out
        assert isinstance(out["content"][0]["text"], str)
        assert out["stop_reason"] in {"end_turn", "max_tokens", "stop_sequence", "tool_use"}, out
        assert isinstance(out["usage"]["input_tokens"], int) and isinstance(out["usage"]["output_tokens"], int)
    manifest = read_manifest(b, bucket_name, "out/", job_id)
    assert manifest["totalRecordCount"] == len(records)
    assert manifest["processedRecordCount"] == len(records)
    assert manifest["errorRecordCount"] == 0
    assert manifest["inputTokenCount"] == sum(x["modelOutput"]["usage"]["input_tokens"] for x in lines)


def test_invocation_type_defaults_to_invoke_model(s3_server, bucket_name):
    # Bedrock's default modelInvocationType is InvokeModel: Converse bodies sent to an
    # Anthropic model that way fail validation, naming the line and the missing field.
    b = s3_server.buckets
    b.create(bucket_name)
    in_uri = b.put(bucket_name, "in/x.jsonl", (SHARED_DATA / "converse-basic.jsonl").read_bytes())
    params = dict(
        jobName=unique("default-type"),
        roleArn=ROLE_ARN,
        modelId=FAST_MODEL,
        inputDataConfig={"s3InputDataConfig": {"s3Uri": in_uri}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{bucket_name}/out/"}},
    )
    arn = s3_server.bedrock.create_model_invocation_job(**params)["jobArn"]
    job = wait_for_status(s3_server.bedrock, arn, {"Failed"})
    assert job["modelInvocationType"] == "InvokeModel"
    assert "x.jsonl:1:" in job["message"], job["message"]
    assert "modelInput.anthropic_version" in job["message"], job["message"]


def test_jobs_of_batchd_run_in_the_same_data_dir_stay_out_of_the_bedrock_api(start_server, binaries, bucket_name, tmp_path):
    """`batchd run` jobs share the server's job store but not its API: they have no roleArn and
    may have several inputs, so boto3 never sees one (not listed; Get and Stop answer
    ResourceNotFoundException), and the server leaves them to `batchd run --resume`."""
    server = start_server(mode="local")
    b = server.buckets
    b.create(bucket_name)
    body, _ = records(3)
    in_uri = b.put(bucket_name, "in/a.jsonl", body)
    arn = create_job(server.bedrock, unique("api"), in_uri, f"s3://{bucket_name}/out/")

    local = tmp_path / "local"
    local.mkdir()
    (local / "a.jsonl").write_text(body)
    (local / "b.jsonl").write_text(records(2, prefix="b")[0])
    run = subprocess.run(
        [
            str(binaries["batchd"]),
            "run",
            "--data-dir",
            str(server.data_dir),
            "--config",
            str(server.config_path),
            "--model-id",
            FAST_MODEL,
            "--out",
            str(tmp_path / "out"),
            "--quiet",
            str(local / "a.jsonl"),
            str(local / "b.jsonl"),
        ],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    run_id = re.search(r"^job:\s+([0-9a-z]{12}) ", run.stdout, re.M).group(1)

    wait_for_status(server.bedrock, arn, {"Completed"})
    listed = [
        job["jobArn"]
        for page in server.bedrock.get_paginator("list_model_invocation_jobs").paginate()
        for job in page["invocationJobSummaries"]
    ]
    assert listed == [arn]
    for call in (server.bedrock.get_model_invocation_job, server.bedrock.stop_model_invocation_job):
        with pytest.raises(server.bedrock.exceptions.ResourceNotFoundException):
            call(jobIdentifier=run_id)
    # The run job is intact in the store.
    con = sqlite3.connect(server.data_dir / "batchd.sqlite")
    try:
        status, origin, inputs = con.execute(
            "SELECT status, origin, inputs FROM jobs WHERE job_id = ?", (run_id,)
        ).fetchone()
    finally:
        con.close()
    assert (status, origin) == ("Completed", "run")
    assert json.loads(inputs) == [str(local / "a.jsonl"), str(local / "b.jsonl")]
