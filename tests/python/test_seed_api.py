"""The first seed's four Python classes, read from ../shared/seeds at test time and run as
written against `batchd serve` and a moto S3 server, and against `batchd serve` alone (its
own S3 API), with only environment variables set: `AWS_DATA_PATH` (botocore learns the
batch-job operations from `batchd sdk botocore`), and `AWS_ENDPOINT_URL_BEDROCK` and
`AWS_ENDPOINT_URL_S3`, or just `AWS_ENDPOINT_URL`.

Only each code block's class definitions run: the blocks' usage examples (after `# 使用例`)
use placeholder buckets and model ids, and the last one ends in `json.dump(analysis)`, which
fails in any environment because `analyze_results` returns numpy's int64 for `error_count`:
the seed's own bug, not batchd's.
"""

from __future__ import annotations

import re
import subprocess
import threading
from pathlib import Path

import boto3
import pytest

from conftest import BATCHD, FAIL_MARKER, FAST_MODEL, REGION, REPO

SEED = (REPO / ".." / "shared" / "seeds" / "000_15ded9bad134a317.txt").resolve()
USAGE_MARK = "# 使用例"


def seed_classes() -> dict:
    """Executes the class part of every ```python block of the seed; returns the namespace."""
    text = SEED.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 4, f"the seed has {len(blocks)} python blocks"
    namespace: dict = {}
    for block in blocks:
        code = block.split(USAGE_MARK, 1)[0]
        exec(compile(code, str(SEED), "exec"), namespace)
    for name in ("BedrockBatchInference", "BatchInputPreparator", "BatchOutputProcessor", "BatchJobMonitor"):
        assert name in namespace, f"{name} not defined by the seed"
    return namespace


@pytest.fixture(params=["moto", "batchd-alone"])
def seed_env(request, monkeypatch, tmp_path, start_server):
    """The environment the seed's code sees: nothing but variables. `moto`: a server in S3
    mode, S3 on moto; `batchd-alone`: one `batchd serve` in local-bucket mode is the endpoint
    of every client (`AWS_ENDPOINT_URL`), its own S3 API serving the buckets."""
    alone = request.param == "batchd-alone"
    server = start_server("local" if alone else "s3")
    endpoints = (
        {"AWS_ENDPOINT_URL": server.url}
        if alone
        else {
            "AWS_ENDPOINT_URL_BEDROCK": server.url,
            "AWS_ENDPOINT_URL_S3": request.getfixturevalue("moto").endpoint,
        }
    )
    data_path = tmp_path / "botocore-data"
    subprocess.run([str(BATCHD), "sdk", "botocore", str(data_path)], check=True, capture_output=True)
    for key in [k for k in list(__import__("os").environ) if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in {
        "AWS_DATA_PATH": str(data_path),
        **endpoints,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(key, value)
    # boto3's default session caches the loader's search path.
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    return server


DOCUMENTS = [
    {"id": f"doc{i}", "content": f"This is document number {i} for analysis.", "metadata": {"type": kind, "date": f"2024-01-0{i + 1}"}}
    for i, kind in enumerate(["report", "article", "report", "memo", "article", "report", "memo"])
]
DOCUMENTS[3]["content"] = f"This one fails: {FAIL_MARKER}"


def test_the_seeds_four_classes_run_unchanged_against_batchd(seed_env, tmp_path, capsys):
    seed = seed_classes()
    input_dir = tmp_path / "batch-input"
    input_dir.mkdir()
    seed["BatchInputPreparator"](str(input_dir)).prepare_input_data(DOCUMENTS, batch_size=3)
    files = sorted(p.name for p in input_dir.iterdir())
    assert files == ["batch_0.json", "batch_1.json", "batch_2.json"]

    s3 = boto3.client("s3")
    for bucket in ("my-input-bucket", "my-output-bucket"):
        s3.create_bucket(Bucket=bucket)
    for name in files:
        s3.upload_file(str(input_dir / name), "my-input-bucket", f"batch-input/{name}")

    inference = seed["BedrockBatchInference"]()
    batch_job = inference.create_batch_job(
        name="document-analysis-batch",
        model_id=FAST_MODEL,
        input_config={
            "location": "s3://my-input-bucket/batch-input/",
            "format": "JSON",
            "batchSize": 3,
            "maxConcurrentBatches": 2,
            "timeoutInSeconds": 600,
        },
        output_config={"location": "s3://my-output-bucket/batch-output/", "format": "JSON"},
    )
    assert re.fullmatch(r"[a-z0-9]{12}", batch_job["jobId"]), batch_job
    execution = inference.start_batch_job(batch_job["jobId"])
    assert execution["jobId"] == batch_job["jobId"]

    monitor = seed["BatchJobMonitor"](batch_job["jobId"])
    watcher = threading.Thread(target=monitor.monitor_progress, kwargs={"interval": 1}, daemon=True)
    watcher.start()
    watcher.join(timeout=120)
    assert not watcher.is_alive(), "the seed's monitor never saw COMPLETED, FAILED or STOPPED"
    printed = capsys.readouterr().out
    assert "Job Status: COMPLETED" in printed, printed
    assert "Processed Items: 7" in printed and "Total Items: 7" in printed and "Progress: 100.0%" in printed, printed

    processor = seed["BatchOutputProcessor"]("s3://my-output-bucket/batch-output/")
    results = processor.process_output(batch_job["jobId"])
    assert list(results["id"]) == [d["id"] for d in DOCUMENTS]
    assert list(results["metadata"]) == [d["metadata"] for d in DOCUMENTS]
    analysis = processor.analyze_results(results)
    assert analysis["total_processed"] == 7
    assert analysis["error_count"] == 1
    assert analysis["success_rate"] == pytest.approx(6 / 7)
    assert analysis["average_processing_time"] > 0
    failed = results[results["status"] == "ERROR"].iloc[0]
    assert failed["id"] == "doc3"
    assert failed["error"]["code"] == "ValidationException"

    job = monitor.get_job_status()
    assert job["status"] == "COMPLETED"
    assert (job["successCount"], job["errorCount"]) == (6, 1)
    assert job["outputPrefix"] == f"s3://my-output-bucket/batch-output/{batch_job['jobId']}/"


def test_boto3_errors_of_the_batch_job_api_carry_the_member(seed_env):
    bedrock = boto3.client("bedrock")
    with pytest.raises(bedrock.exceptions.ValidationException) as bad:
        bedrock.create_batch_inference_job(
            name="bad",
            modelId=FAST_MODEL,
            inputConfiguration={"inputLocation": "s3://my-input-bucket/x/", "inputFormat": "XML"},
            outputConfiguration={"outputLocation": "s3://my-output-bucket/y/"},
        )
    assert "inputConfiguration.inputFormat: must be JSON or JSONL" in str(bad.value)
    with pytest.raises(bedrock.exceptions.ResourceNotFoundException):
        bedrock.get_batch_inference_job(jobId="abcdefabcdef")
    # The Bedrock operations are still there, unchanged.
    assert bedrock.list_model_invocation_jobs()["invocationJobSummaries"] == []
