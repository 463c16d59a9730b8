"""Authentication of `batchd serve` as boto3 and the AWS CLI meet it: SigV4 access keys and
bearer keys from `[[auth.keys]]` / `[[auth.tokens]]`, AWS's error codes for each refusal, one
account's jobs invisible to another, and the safe default (no keys: loopback only)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import urllib.error
import urllib.request

import botocore.auth
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError
from conftest import (
    AWS_CLI,
    REGION,
    clean_env,
    client_error,
    create_job,
    free_port,
    records,
)

ACCOUNT_A = "111111111111"
ACCOUNT_B = "222222222222"
KEY_A = ("AKIDBATCHDA", "secret-of-a-Zq8x/+w")
KEY_B = ("AKIDBATCHDB", "secret-of-b-4Jm2k")
TOKEN_A = "bearer-of-a-7hQ"
TOKEN_B = "bearer-of-b-9pX"
SECRETS = [KEY_A[1], KEY_B[1], TOKEN_A, TOKEN_B]

# Loaded by the AWS CLI's Python (PYTHONPATH) to sign in the past or change the body after
# signing: what the CLI itself never does, so the server's checks can be seen from it.
SITECUSTOMIZE = '''
import os
_skew = int(os.environ.get("BATCHD_TEST_SIGN_SKEW_SECONDS") or 0)
_tamper = os.environ.get("BATCHD_TEST_TAMPER_BODY")
if _skew or _tamper:
    import datetime
    import botocore.auth as _auth
    if _skew:
        _now = _auth.get_current_datetime
        _auth.get_current_datetime = lambda *a, **k: _now(*a, **k) - datetime.timedelta(seconds=_skew)
    if _tamper:
        _old, _new = _tamper.split("=>")
        _add = _auth.SigV4Auth.add_auth
        def _add_then_tamper(self, request):
            _add(self, request)
            data = request.data
            if isinstance(data, bytes):
                request.data = data.replace(_old.encode(), _new.encode())
            elif isinstance(data, str):
                request.data = data.replace(_old, _new)
        _auth.SigV4Auth.add_auth = _add_then_tamper
'''


def auth_toml(secret_b_file, token_b_hash_file) -> str:
    """Key A's secret from an environment variable, key B's from a file, token A in the
    config, token B as a hash in a file."""
    return f"""
[[auth.keys]]
access_key_id = "{KEY_A[0]}"
secret_access_key_env = "BATCHD_TEST_SECRET_A"
account_id = "{ACCOUNT_A}"

[[auth.keys]]
access_key_id = "{KEY_B[0]}"
secret_access_key_file = "{secret_b_file}"
account_id = "{ACCOUNT_B}"

[[auth.tokens]]
token = "{TOKEN_A}"
account_id = "{ACCOUNT_A}"

[[auth.tokens]]
token_file = "{token_b_hash_file}"
account_id = "{ACCOUNT_B}"
"""


@pytest.fixture
def keyed_server(start_server, tmp_path):
    """A local-bucket server with two accounts' keys, logging everything (for the leak check)."""
    secret_b = tmp_path / "secret-b"
    secret_b.write_text(KEY_B[1] + "\n")
    token_b = tmp_path / "token-b.sha256"
    token_b.write_text("sha256:" + hashlib.sha256(TOKEN_B.encode()).hexdigest() + "\n")
    return start_server(
        "local",
        extra_toml=auth_toml(secret_b, token_b),
        env={"BATCHD_TEST_SECRET_A": KEY_A[1], "BATCHD_LOG": "trace"},
    )


def error_of(call) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as e:
        call()
    return client_error(e)


def put_input(server, name: str) -> tuple[str, str]:
    server.buckets.create("bkt")
    body, _ = records(2)
    return server.buckets.put("bkt", f"{name}/in.jsonl", body), f"s3://bkt/{name}/out/"


def test_each_account_sees_lists_and_stops_only_its_own_jobs(keyed_server):
    a = keyed_server.client(key=KEY_A)
    b = keyed_server.client(key=KEY_B)
    arns_a = []
    for i in range(3):
        in_uri, out_uri = put_input(keyed_server, f"a{i}")
        arns_a.append(create_job(a, f"job-a-{i}", in_uri, out_uri))
    in_uri, out_uri = put_input(keyed_server, "b0")
    arn_b = create_job(b, "job-b-0", in_uri, out_uri)
    assert all(f":{ACCOUNT_A}:" in arn for arn in arns_a), arns_a
    assert f":{ACCOUNT_B}:" in arn_b

    # List, one job per page: every page of A holds only A's jobs.
    pages = a.get_paginator("list_model_invocation_jobs").paginate(PaginationConfig={"PageSize": 1})
    listed = [s["jobArn"] for page in pages for s in page["invocationJobSummaries"]]
    assert sorted(listed) == sorted(arns_a)
    assert [s["jobArn"] for s in b.list_model_invocation_jobs()["invocationJobSummaries"]] == [arn_b]

    # B names A's job: not found, exactly as an unknown id.
    for call in (
        lambda: b.get_model_invocation_job(jobIdentifier=arns_a[0]),
        lambda: b.stop_model_invocation_job(jobIdentifier=arns_a[0]),
        lambda: b.get_model_invocation_job(jobIdentifier=arns_a[0].rsplit("/", 1)[1]),
    ):
        code, status, _ = error_of(call)
        assert (code, status) == ("ResourceNotFoundException", 404)
    assert a.get_model_invocation_job(jobIdentifier=arns_a[0])["status"] not in ("Stopping", "Stopped")


def test_wrong_keys_and_tampered_requests_get_awss_error_codes(keyed_server, monkeypatch):
    server = keyed_server
    right = server.client(key=KEY_A)
    assert right.list_model_invocation_jobs()["invocationJobSummaries"] == []

    wrong_secret = server.client(key=(KEY_A[0], "not-the-secret"))
    code, status, message = error_of(wrong_secret.list_model_invocation_jobs)
    assert (code, status) == ("InvalidSignatureException", 403), message
    assert "signature we calculated does not match" in message

    unknown = server.client(key=("AKIDNOBODY", KEY_A[1]))
    code, status, message = error_of(unknown.list_model_invocation_jobs)
    assert (code, status) == ("UnrecognizedClientException", 403), message

    unsigned = boto3_unsigned(server)
    code, status, _ = error_of(unsigned.list_model_invocation_jobs)
    assert (code, status) == ("MissingAuthenticationTokenException", 403)

    # The body changed after it was signed (same length, so only the hash tells).
    in_uri, out_uri = put_input(server, "tamper")
    original = botocore.auth.SigV4Auth.add_auth

    def add_then_tamper(self, request):
        original(self, request)
        request.data = request.data.replace(b"job-tamper", b"job-TAMPER")

    monkeypatch.setattr(botocore.auth.SigV4Auth, "add_auth", add_then_tamper)
    code, status, message = error_of(lambda: create_job(right, "job-tamper", in_uri, out_uri))
    assert (code, status) == ("InvalidSignatureException", 403), message
    monkeypatch.undo()

    # Signed 20 minutes ago.
    now = botocore.auth.get_current_datetime
    import datetime

    monkeypatch.setattr(
        botocore.auth, "get_current_datetime", lambda *a, **k: now(*a, **k) - datetime.timedelta(minutes=20)
    )
    code, status, message = error_of(right.list_model_invocation_jobs)
    assert (code, status) == ("InvalidSignatureException", 403), message
    assert message.startswith("Signature expired:"), message
    monkeypatch.undo()
    assert right.list_model_invocation_jobs()["invocationJobSummaries"] == []

    # No job was created by any refused request, and no secret reached the log.
    assert_no_secret_in_logs(server)


def boto3_unsigned(server):
    import boto3

    return boto3.client(
        "bedrock",
        endpoint_url=server.url,
        region_name=REGION,
        config=Config(signature_version=UNSIGNED, retries={"total_max_attempts": 1}),
    )


def assert_no_secret_in_logs(server) -> None:
    text = server.proc.stdout_path.read_text(errors="replace") + server.proc.stderr_path.read_text(errors="replace")
    # The log is at trace level and names each refusal (so there was something to search).
    assert "request refused" in text, text[-2000:]
    for secret in SECRETS:
        assert secret not in text, f"a secret is in the server's log: {secret[:6]}..."


def run_cli(server, tmp_path, key, *args, **env_extra) -> subprocess.CompletedProcess:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (tmp_path / "aws-config").write_text("")
    env = clean_env(
        AWS_ACCESS_KEY_ID=key[0],
        AWS_SECRET_ACCESS_KEY=key[1],
        AWS_CONFIG_FILE=str(tmp_path / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "aws-config"),
        AWS_PAGER="",
        AWS_MAX_ATTEMPTS="1",
        PYTHONPATH=str(site),
        **env_extra,
    )
    argv = [str(AWS_CLI), "bedrock", *args, "--endpoint-url", server.url, "--region", REGION, "--output", "json"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def test_the_aws_cli_with_right_wrong_and_tampered_keys(keyed_server, tmp_path):
    server = keyed_server
    ok = run_cli(server, tmp_path, KEY_B, "list-model-invocation-jobs")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["invocationJobSummaries"] == []

    in_uri, out_uri = put_input(server, "cli")
    create = [
        "create-model-invocation-job",
        "--job-name",
        "job-cli-1",
        "--role-arn",
        "arn:aws:iam::123456789012:role/r",
        "--model-id",
        "anthropic.claude-3-haiku-20240307-v1:0",
        "--model-invocation-type",
        "Converse",
        "--input-data-config",
        json.dumps({"s3InputDataConfig": {"s3Uri": in_uri}}),
        "--output-data-config",
        json.dumps({"s3OutputDataConfig": {"s3Uri": out_uri}}),
    ]
    cases = [
        ((KEY_B[0], "wrong-secret"), ["list-model-invocation-jobs"], {}, "InvalidSignatureException"),
        (("AKIDNOBODY", KEY_B[1]), ["list-model-invocation-jobs"], {}, "UnrecognizedClientException"),
        (KEY_B, ["list-model-invocation-jobs"], {"BATCHD_TEST_SIGN_SKEW_SECONDS": "1200"}, "Signature expired"),
        (KEY_B, create, {"BATCHD_TEST_TAMPER_BODY": "job-cli-1=>job-CLI-1"}, "InvalidSignatureException"),
    ]
    for key, args, env, expected in cases:
        refused = run_cli(server, tmp_path, key, *args, **env)
        assert refused.returncode != 0, f"{key[0]} {env}: accepted\n{refused.stdout}"
        assert expected in refused.stderr, f"{key[0]} {env}: {refused.stderr}"

    created = run_cli(server, tmp_path, KEY_B, *create)
    assert created.returncode == 0, created.stderr
    arn = json.loads(created.stdout)["jobArn"]
    assert f":{ACCOUNT_B}:" in arn
    other = run_cli(server, tmp_path, KEY_A, "get-model-invocation-job", "--job-identifier", arn)
    assert other.returncode != 0 and "ResourceNotFoundException" in other.stderr, other.stderr
    assert_no_secret_in_logs(server)


def http_get(url: str, token: str | None):
    """(status, headers (case-insensitive), JSON body)."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.headers, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.load(e)


def test_bearer_keys_name_their_account(keyed_server):
    server = keyed_server
    in_uri, out_uri = put_input(server, "bearer")
    arn = create_job(server.client(key=KEY_B), "job-bearer", in_uri, out_uri)
    url = f"{server.url}/model-invocation-jobs"
    status, _, body = http_get(url, TOKEN_B)  # kept as a hash in a file
    assert status == 200 and [s["jobArn"] for s in body["invocationJobSummaries"]] == [arn]
    status, _, body = http_get(url, TOKEN_A)
    assert status == 200 and body["invocationJobSummaries"] == []
    status, headers, body = http_get(url, "not-a-key")
    assert (status, body["__type"]) == (403, "UnrecognizedClientException")
    assert headers["x-amzn-ErrorType"] == "UnrecognizedClientException"
    assert_no_secret_in_logs(server)


def test_without_keys_the_server_stays_on_loopback(start_server, binaries, tmp_path):
    # No keys on every address: refused, saying how to add a key.
    config = tmp_path / "open.toml"
    config.write_text("")
    port = free_port()
    result = subprocess.run(
        [str(binaries["batchd"]), "serve", "--listen", f"0.0.0.0:{port}", "--data-dir", str(tmp_path / "d"), "--config", str(config)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "without authentication" in result.stderr and "[[auth.keys]]" in result.stderr, result.stderr
    assert "listening" not in result.stdout

    # No keys on loopback: anyone, as 000000000000, and the server says so.
    open_server = start_server("local")
    jobs = open_server.bedrock.list_model_invocation_jobs()
    assert jobs["invocationJobSummaries"] == []
    assert "authentication is off" in open_server.proc.stderr_path.read_text()

    # With a key on every address: it starts, and the key works.
    keyed = start_server(
        "local",
        listen="0.0.0.0:0",
        extra_toml=f'[[auth.keys]]\naccess_key_id = "{KEY_A[0]}"\nsecret_access_key = "{KEY_A[1]}"\naccount_id = "{ACCOUNT_A}"\n',
    )
    assert keyed.client(key=KEY_A).list_model_invocation_jobs()["invocationJobSummaries"] == []
    code, status, _ = error_of(keyed.client().list_model_invocation_jobs)
    assert (code, status) == ("UnrecognizedClientException", 403)


def test_locations_cannot_escape_the_buckets_folder(start_server, tmp_path):
    """In local-bucket mode `s3://b/key` is `<data-dir>/buckets/b/key`: a key that would leave
    that folder, or a local path given to an API, is a ValidationException, and nothing is
    written outside."""
    server = start_server("local")
    server.buckets.create("bkt")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "in.jsonl").write_text(records(1)[0])
    client = server.bedrock_raw
    for in_uri, out_uri in [
        (f"s3://bkt/{outside}/in.jsonl".replace("bkt/", "bkt//", 1), "s3://bkt/out/"),
        ("s3://bkt/in/", f"s3://bkt/{outside}/".replace("bkt/", "bkt//", 1)),
        ("s3://bkt/../../etc/", "s3://bkt/out/"),
    ]:
        code, status, message = error_of(lambda: create_job(client, "escape", in_uri, out_uri))
        assert (code, status) == ("ValidationException", 400), (in_uri, out_uri, message)
    # The batch-job API's locations are free-form strings: local paths are refused too.
    for location in [str(outside) + "/", f"file://{outside}/"]:
        body = json.dumps(
            {
                "name": "escape",
                "modelId": "anthropic.claude-3-haiku-20240307-v1:0",
                "inputConfiguration": {"inputLocation": location},
                "outputConfiguration": {"outputLocation": location},
            }
        ).encode()
        request = urllib.request.Request(
            f"{server.url}/batch-inference-jobs", data=body, headers={"content-type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(request, timeout=10)
        answer = json.load(e.value)
        assert (e.value.code, answer["__type"]) == (400, "ValidationException"), answer
        assert "not an s3:// URI" in answer["message"], answer
    assert sorted(p.name for p in outside.iterdir()) == ["in.jsonl"]


def test_batchd_jobs_sends_its_bearer_key(keyed_server, binaries):
    server = keyed_server
    in_uri, out_uri = put_input(server, "jobs-cli")
    arn = create_job(server.client(key=KEY_B), "job-jobs-cli", in_uri, out_uri)

    def jobs_list(**env):
        return subprocess.run(
            [str(binaries["batchd"]), "jobs", "--endpoint", server.url, "list"],
            env=clean_env(**env),
            capture_output=True,
            text=True,
            timeout=60,
        )

    listed = jobs_list(BATCHD_API_KEY=TOKEN_B)
    assert listed.returncode == 0, listed.stderr
    assert arn.rsplit("/", 1)[1] in listed.stdout
    refused = jobs_list()
    assert refused.returncode == 1 and "MissingAuthenticationTokenException" in refused.stderr + refused.stdout


def test_the_openai_sdk_with_right_wrong_and_another_accounts_keys(keyed_server):
    """Bearer keys are the openai SDK's API keys: a wrong one is its AuthenticationError; one
    account's files and batches (uploaded, published) are not found by another's key."""
    import asyncio

    import openai
    from test_openai_batches import chat_lines, lines_of, upload, wait

    server = keyed_server

    def sdk(key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=30)

    a, b = sdk(TOKEN_A), sdk(TOKEN_B)
    with pytest.raises(openai.AuthenticationError) as refused:
        sdk("sk-not-a-key").files.list()
    assert refused.value.code == "invalid_api_key" and refused.value.status_code == 401

    async def async_refused():
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="sk-not-a-key", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await client.batches.list()
        await client.close()

    asyncio.run(async_refused())

    file_id = upload(a, chat_lines(3))
    raw = a.files.with_raw_response.retrieve(file_id)
    assert raw.headers.get("x-request-id"), "the SDK's request id"
    batch = a.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert [f.id for f in b.files.list()] == [] and b.batches.list().data == []
    for call in (b.files.retrieve, b.files.content, b.files.delete):
        with pytest.raises(openai.NotFoundError):
            call(file_id)
    for call in (b.batches.retrieve, b.batches.cancel):
        with pytest.raises(openai.NotFoundError):
            call(batch.id)
    with pytest.raises(openai.BadRequestError) as e:
        b.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert e.value.param == "input_file_id"
    done = wait(a, batch.id)
    assert done.status == "completed", done
    assert len(lines_of(a, done.output_file_id)) == 3
    with pytest.raises(openai.NotFoundError):
        b.files.content(done.output_file_id)
    assert sorted(f.id for f in a.files.list()) == sorted([done.output_file_id, file_id])
    assert_no_secret_in_logs(server)


def test_no_secret_in_any_response_log_line_or_file_of_a_full_run(keyed_server, wait_status):
    """A whole job through both key kinds, with refusals and errors on the way: no secret in
    any response (status line, headers, body), any log line (trace level) or any file the
    server wrote."""
    server = keyed_server
    seen: list[str] = []

    def record(http_response, **_):
        seen.append(f"{http_response.status_code} {dict(http_response.headers)} {http_response.text}")

    a = server.client(key=KEY_A)
    a.meta.events.register("after-call.bedrock.*", record)
    in_uri, out_uri = put_input(server, "leak")
    arn = create_job(a, "job-leak", in_uri, out_uri)
    wait_status(a, arn, {"Completed"})
    a.get_model_invocation_job(jobIdentifier=arn)
    a.list_model_invocation_jobs()
    for call in (lambda: a.stop_model_invocation_job(jobIdentifier=arn), lambda: a.get_model_invocation_job(jobIdentifier="000000000000")):
        error_of(call)
    wrong = server.client(key=(KEY_A[0], KEY_B[1]))
    wrong.meta.events.register("after-call.bedrock.*", record)
    error_of(lambda: wrong.list_model_invocation_jobs())
    for path in ("/model-invocation-jobs", "/batchd/metrics", "/v1/models", "/v1/files", "/batch-inference-jobs", "/v1/nope"):
        for token in (TOKEN_A, TOKEN_B, KEY_A[1], None):
            status, headers, body = http_get(f"{server.url}{path}", token)
            seen.append(f"{status} {dict(headers)} {json.dumps(body)}")
    assert len(seen) > 20
    written = [p.read_text(errors="replace") for p in server.data_dir.rglob("*") if p.is_file()]
    assert any("leak" in text or "recordId" in text for text in written), "the job's files are among them"
    for secret in SECRETS:
        for text in seen + written:
            assert secret not in text, f"a secret is in a response or file: {secret[:6]}..."
    assert_no_secret_in_logs(server)
