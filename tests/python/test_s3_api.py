"""The S3 API of `batchd serve` (the local buckets on the Bedrock API's port): the AWS CLI and
boto3 against one server and nothing else, a whole Bedrock batch workflow through it, atomic
writes across a SIGKILL, keys that would leave the data dir, and the shared authentication."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import zlib

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from conftest import REGION, ROLE_ARN, job_id_of, unique, wait_for_status

EMBED_MODEL = "amazon.titan-embed-text-v2:0"
MIB = 1024 * 1024


def embed_model_toml(fake) -> str:
    """The fake backend's embeddings under a Titan id: deterministic output (no ids, no
    latencies), so a job's output can be compared byte for byte. One record a call: a call's
    token count is shared among its records by length, so batches formed by timing would
    change the per-record counts."""
    return (
        f'[[models]]\nid = "{EMBED_MODEL}"\nbackend = "openai"\nbase_url = "{fake.base_url}"\n'
        "max_concurrency = 8\nembed_batch_size = 1\n"
    )


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            h.update(block)
    return h.hexdigest()


def test_aws_cli_and_boto3_run_a_whole_batch_workflow_on_one_server(start_server, fake, binaries, tmp_path):
    """`aws s3 mb`, `aws s3 cp` of a 100 MB input (over the CLI's 8 MB threshold: a multipart
    upload), `aws s3 ls`, the job through boto3's bedrock client, `aws s3 cp` of the output:
    the bytes equal what `batchd run` writes for the same input."""
    server = start_server(mode="local", extra_toml=embed_model_toml(fake))
    bucket = "workflow"
    text = "lorem ipsum dolor sit amet " * 40_000  # ~1 MB a record, 100 records
    local_input = tmp_path / "input.jsonl"
    with open(local_input, "w") as f:
        for i in range(100):
            record = {"recordId": f"r{i:04d}", "modelInput": {"inputText": f"{i} {text}", "dimensions": 256}}
            f.write(json.dumps(record) + "\n")
    size = local_input.stat().st_size
    assert size >= 100 * 1_000_000

    server.aws("s3", "mb", f"s3://{bucket}")
    started = time.monotonic()
    server.aws("s3", "cp", str(local_input), f"s3://{bucket}/in/input.jsonl")
    upload_seconds = time.monotonic() - started
    listing = server.aws("s3", "ls", f"s3://{bucket}/in/").stdout
    assert f"{size} input.jsonl" in listing, listing
    assert "workflow" in server.aws("s3", "ls").stdout
    # The same file batchd's jobs read, whole; nothing left in the staging folder.
    stored = server.data_dir / "buckets" / bucket / "in" / "input.jsonl"
    assert sha256_of(stored) == sha256_of(local_input)
    assert not any((server.data_dir / "s3-staging" / "tmp").iterdir())
    assert not any((server.data_dir / "s3-staging" / "uploads").iterdir())

    arn = server.bedrock.create_model_invocation_job(
        jobName=unique("workflow"),
        roleArn=ROLE_ARN,
        modelId=EMBED_MODEL,
        inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{bucket}/in/"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{bucket}/out/"}},
        modelInvocationType="InvokeModel",
    )["jobArn"]
    job = wait_for_status(server.bedrock, arn, {"Completed"}, timeout=240, interval=0.5)
    assert job["status"] == "Completed"
    job_id = job_id_of(arn)

    keys = [o["Key"] for o in server.s3().list_objects_v2(Bucket=bucket, Prefix=f"out/{job_id}/")["Contents"]]
    assert sorted(keys) == [f"out/{job_id}/input.jsonl.out", f"out/{job_id}/manifest.json.out"]
    downloaded = tmp_path / "server.out"
    server.aws("s3", "cp", f"s3://{bucket}/out/{job_id}/input.jsonl.out", str(downloaded))

    run_out = tmp_path / "run-out"
    run = subprocess.run(
        [
            str(binaries["batchd"]),
            "run",
            "--data-dir",
            str(tmp_path / "run-data"),
            "--config",
            str(server.config_path),
            "--model-id",
            EMBED_MODEL,
            "--invocation-type",
            "invoke-model",
            "--out",
            str(run_out),
            "--quiet",
            str(local_input),
        ],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr
    [expected] = list(run_out.glob("*/input.jsonl.out"))
    assert downloaded.stat().st_size == expected.stat().st_size
    assert sha256_of(downloaded) == sha256_of(expected)
    print(f"100 MB upload: {upload_seconds:.1f} s")


def raw_request_cut_off(port: int, method: str, path: str, length: int, send: int) -> socket.socket:
    """Sends an unsigned request's headers and `send` of its `length` body bytes, and keeps the
    connection open (the rest never comes)."""
    sock = socket.create_connection(("127.0.0.1", port))
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {length}\r\n"
        "x-amz-content-sha256: UNSIGNED-PAYLOAD\r\n\r\n"
    )
    sock.sendall(head.encode() + b"x" * send)
    return sock


def test_a_server_killed_mid_upload_leaves_no_partial_object(start_server, tmp_path):
    """SIGKILL while a PutObject and an UploadPart are half sent: afterwards neither object
    exists, nothing half-written is in the bucket, and after a restart the upload's finished
    part completes into a whole object."""
    server = start_server(mode="local")
    s3 = server.s3()
    bucket = "crash"
    s3.create_bucket(Bucket=bucket)
    upload = s3.create_multipart_upload(Bucket=bucket, Key="in/big.jsonl")["UploadId"]
    part1 = b'{"recordId": "a"}\n' * (6 * MIB // 18)
    etag1 = s3.upload_part(Bucket=bucket, Key="in/big.jsonl", UploadId=upload, PartNumber=1, Body=part1)["ETag"]

    port = int(server.url.rsplit(":", 1)[1])
    socks = [
        raw_request_cut_off(port, "PUT", f"/{bucket}/in/single.jsonl", 8 * MIB, 3 * MIB),
        raw_request_cut_off(port, "PUT", f"/{bucket}/in/big.jsonl?partNumber=2&uploadId={upload}", 8 * MIB, 3 * MIB),
    ]
    tmp_dir = server.data_dir / "s3-staging" / "tmp"
    deadline = time.monotonic() + 20
    while sum(p.stat().st_size for p in tmp_dir.iterdir()) < 4 * MIB:
        assert time.monotonic() < deadline, "the server never started writing the two bodies"
        time.sleep(0.05)
    server.proc.stop(signal.SIGKILL)
    for sock in socks:
        sock.close()

    bucket_dir = server.data_dir / "buckets" / bucket
    assert [p for p in bucket_dir.rglob("*") if p.is_file()] == []

    restarted = start_server(mode="local", data_dir=server.data_dir, config_path=server.config_path)
    s3 = restarted.s3()
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="in/single.jsonl")
    assert e.value.response["Error"]["Code"] == "404"
    assert not any(tmp_dir.iterdir()), "temp files of the killed server are removed at start"
    done = s3.complete_multipart_upload(
        Bucket=bucket,
        Key="in/big.jsonl",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag1}]},
    )
    assert done["ETag"].strip('"').endswith("-1")
    assert s3.get_object(Bucket=bucket, Key="in/big.jsonl")["Body"].read() == part1


def test_boto3_s3_operations(start_server):
    server = start_server(mode="local")
    s3 = server.s3()
    bucket = "ops"
    s3.create_bucket(Bucket=bucket)
    with pytest.raises(ClientError) as e:
        s3.create_bucket(Bucket=bucket)
    assert e.value.response["Error"]["Code"] == "BucketAlreadyOwnedByYou"
    s3.head_bucket(Bucket=bucket)
    assert bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    with pytest.raises(ClientError) as e:
        s3.head_bucket(Bucket="no-such-bucket")
    assert e.value.response["Error"]["Code"] == "404"

    s3.put_object(Bucket=bucket, Key="a/b/c.jsonl", Body=b"0123456789")
    assert s3.get_object(Bucket=bucket, Key="a/b/c.jsonl")["Body"].read() == b"0123456789"
    ranged = s3.get_object(Bucket=bucket, Key="a/b/c.jsonl", Range="bytes=2-5")
    assert ranged["Body"].read() == b"2345" and ranged["ContentRange"] == "bytes 2-5/10"
    assert s3.get_object(Bucket=bucket, Key="a/b/c.jsonl", Range="bytes=-3")["Body"].read() == b"789"
    head = s3.head_object(Bucket=bucket, Key="a/b/c.jsonl")
    assert head["ContentLength"] == 10
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="a/b/missing")
    assert e.value.response["Error"]["Code"] == "NoSuchKey"
    # Jobs see what S3 wrote, and S3 sees what jobs write.
    assert (server.data_dir / "buckets" / bucket / "a" / "b" / "c.jsonl").read_bytes() == b"0123456789"
    (server.data_dir / "buckets" / bucket / "job-wrote.out").write_bytes(b"out")
    assert s3.get_object(Bucket=bucket, Key="job-wrote.out")["Body"].read() == b"out"

    s3.copy_object(Bucket=bucket, Key="copy/c.jsonl", CopySource={"Bucket": bucket, "Key": "a/b/c.jsonl"})
    assert s3.get_object(Bucket=bucket, Key="copy/c.jsonl")["Body"].read() == b"0123456789"

    for i in range(7):
        s3.put_object(Bucket=bucket, Key=f"many/{i:02d}", Body=b"x")
    s3.put_object(Bucket=bucket, Key="many/sub/deep", Body=b"x")
    pages = list(
        s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="many/", PaginationConfig={"PageSize": 3})
    )
    assert len(pages) == 3
    keys = [o["Key"] for p in pages for o in p.get("Contents", [])]
    assert keys == [f"many/{i:02d}" for i in range(7)] + ["many/sub/deep"]
    top = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["a/", "copy/", "many/"]
    assert [o["Key"] for o in top["Contents"]] == ["job-wrote.out"]
    nested = s3.list_objects_v2(Bucket=bucket, Prefix="many/", Delimiter="/")
    assert [p["Prefix"] for p in nested["CommonPrefixes"]] == ["many/sub/"]
    assert len(nested["Contents"]) == 7

    s3.delete_object(Bucket=bucket, Key="copy/c.jsonl")
    deleted = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": f"many/{i:02d}"} for i in range(7)]})
    assert len(deleted["Deleted"]) == 7
    top = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["a/", "many/"]
    assert not (server.data_dir / "buckets" / bucket / "copy").exists(), "an emptied prefix leaves no folder"

    # A key with a space, a plus and non-ASCII, through `encoding-type=url` listings.
    odd = "odd/a b+c ü.jsonl"
    s3.put_object(Bucket=bucket, Key=odd, Body=b"odd")
    # botocore asks for url encoding itself and decodes; asked for by the caller, it does not.
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="odd/")["Contents"]] == [odd]
    encoded = s3.list_objects_v2(Bucket=bucket, Prefix="odd/", EncodingType="url")["Contents"][0]["Key"]
    assert encoded == "odd/a%20b%2Bc%20%C3%BC.jsonl"
    assert s3.get_object(Bucket=bucket, Key=odd)["Body"].read() == b"odd"


@pytest.mark.parametrize(
    "path",
    ["/ops/..%2F..%2Fbatchd.sqlite", "/ops/a%2F..%2F..%2F..%2Fetc%2Fpasswd", "/ops/a//b", "/ops/.%2Fx"],
)
def test_keys_that_would_leave_the_buckets_are_refused(start_server, path):
    server = start_server(mode="local")
    server.s3().create_bucket(Bucket="ops")
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status = answer.split(b" ", 2)[1]
    assert status in (b"400", b"403", b"404"), answer
    assert [p for p in server.data_dir.rglob("*") if p.is_file() and p.read_bytes() == b"abc"] == []


KEY = ("AKIDBATCHDS3", "secret-of-s3-Zq8x")
ACCOUNT = "111111111111"


def test_s3_requests_pass_the_same_authentication(start_server):
    extra = f'[[auth.keys]]\naccess_key_id = "{KEY[0]}"\nsecret_access_key = "{KEY[1]}"\naccount_id = "{ACCOUNT}"\n'
    server = start_server(mode="local", extra_toml=extra)
    s3 = server.s3(key=KEY)
    s3.create_bucket(Bucket="auth")
    s3.put_object(Bucket="auth", Key="k", Body=b"signed")
    assert s3.get_object(Bucket="auth", Key="k")["Body"].read() == b"signed"
    for key, code in [((KEY[0], "wrong"), "SignatureDoesNotMatch"), (("AKIDUNKNOWN", "x"), "InvalidAccessKeyId")]:
        with pytest.raises(ClientError) as e:
            server.s3(key=key).list_buckets()
        assert e.value.response["Error"]["Code"] == code
    with pytest.raises(ClientError) as e:
        server.s3(key=(KEY[0], "wrong")).put_object(Bucket="auth", Key="k2", Body=b"x")
    assert not (server.data_dir / "buckets" / "auth" / "k2").exists()
    # The AWS CLI with the key; without one nothing is listed.
    listed = server.aws("s3", "ls", "s3://auth/", AWS_ACCESS_KEY_ID=KEY[0], AWS_SECRET_ACCESS_KEY=KEY[1])
    assert " k\n" in listed.stdout
    refused = server.aws("s3", "ls", "s3://auth/", "--no-sign-request", check=False)
    assert refused.returncode != 0 and "AccessDenied" in refused.stderr



def aws_chunked(data: bytes, chunk: int = 64 * 1024) -> bytes:
    """`data` as an aws-chunked body with a CRC32 trailer, as botocore frames uploads over HTTPS."""
    out = b"".join(
        f"{len(data[i : i + chunk]):x}\r\n".encode() + data[i : i + chunk] + b"\r\n" for i in range(0, len(data), chunk)
    )
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    return out + f"0\r\nx-amz-checksum-crc32:{crc}\r\n\r\n".encode()


def put_chunked(server, path: str, data: bytes, body: bytes | None = None) -> int:
    """A PutObject with an aws-chunked body and STREAMING-UNSIGNED-PAYLOAD-TRAILER, signed by
    botocore's own S3 signer (what it does for uploads over HTTPS); returns the status."""
    body = aws_chunked(data) if body is None else body
    request = AWSRequest(
        method="PUT",
        url=f"{server.url}{path}",
        data=body,
        headers={
            "Content-Encoding": "aws-chunked",
            "x-amz-decoded-content-length": str(len(data)),
            "x-amz-trailer": "x-amz-checksum-crc32",
        },
    )
    request.context["checksum"] = {"request_algorithm": {"in": "trailer", "algorithm": "crc32"}}
    S3SigV4Auth(Credentials(*KEY), "s3", REGION).add_auth(request)
    assert request.headers["X-Amz-Content-SHA256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    headers = {k: v for k, v in request.headers.items()}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(request.url, data=body, headers=headers, method="PUT"), timeout=30
        ) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_aws_chunked_uploads_with_checksum_trailers(start_server):
    extra = f'[[auth.keys]]\naccess_key_id = "{KEY[0]}"\nsecret_access_key = "{KEY[1]}"\naccount_id = "{ACCOUNT}"\n'
    server = start_server(mode="local", extra_toml=extra)
    s3 = server.s3(key=KEY)
    s3.create_bucket(Bucket="chunked")
    data = os.urandom(300_000)
    assert put_chunked(server, "/chunked/in/x.bin", data) == 200
    assert s3.get_object(Bucket="chunked", Key="in/x.bin")["Body"].read() == data
    # Cut off inside a chunk: refused, nothing stored.
    whole = aws_chunked(data)
    assert put_chunked(server, "/chunked/in/cut.bin", data, body=whole[: len(whole) // 2]) >= 400
    assert not (server.data_dir / "buckets" / "chunked" / "in" / "cut.bin").exists()
