"""Fixtures of the `batchd serve` suite: real processes on 127.0.0.1, real clients.

- `fake` / `slow_fake`: `batchd-fake` processes (the model backends), one per session.
- `moto`: a moto S3 server (`BATCHD_TEST_MOTO_SERVER`), one per session.
- `start_server`: a `batchd serve` factory (config overrides, mode "s3" or "local"); every
  server it starts is stopped at the end of the test (or module, see `module_server`).
- `Server.bedrock` / `Server.bedrock_raw`: boto3 `bedrock` clients on the server
  (`bedrock_raw` skips botocore's client-side checks so the server's own validation is hit).
- `Server.buckets`: reads and writes `s3://bucket/key` objects the way batchd sees them
  (moto through boto3's S3 client, or files under `<data-dir>/buckets/`).
- `aws_cli`: runs `.venv/bin/aws` with a clean environment; `Server.aws` runs it on a server,
  `Server.s3` is a boto3 `s3` client on the server's own S3 API.
- `wait_for_status`: polls GetModelInvocationJob until a status (or any ended status).
- `http_json`: a plain (unsigned or bearer) HTTP request, for routes no SDK covers.

Every process started here is stopped in teardown: SIGTERM, wait, SIGKILL on timeout.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
# Where cargo put the binaries (scripts/pytest.sh builds them; CARGO_TARGET_DIR moves them).
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
BATCHD = TARGET / "debug" / "batchd"
BATCHD_FAKE = TARGET / "debug" / "batchd-fake"
AWS_CLI = Path(sys.executable).parent / "aws"

REGION = "us-east-1"
ROLE_ARN = "arn:aws:iam::123456789012:role/BatchInferenceRole"
# The fast model answers at once; the slow one takes ~0.2 s per record, 2 at a time
# (about 10 records/s), so a job of N records runs about N/10 seconds.
FAST_MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
SLOW_MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
SLOW_LATENCY_MS = 150
SLOW_JITTER_MS = 100
SLOW_CONCURRENCY = 2
# The fast fake answers 400 to prompts containing this marker (per-record errors).
FAIL_MARKER = "BATCHD-FAIL-400"

ENDED = {"Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"}
JOB_ARN_RE = r"^arn:aws:bedrock:us-east-1:[0-9]{12}:model-invocation-job/[a-z0-9]{12}$"
MANIFEST_KEYS = {
    "totalRecordCount",
    "processedRecordCount",
    "successRecordCount",
    "errorRecordCount",
    "inputTokenCount",
    "outputTokenCount",
}

STOP_TIMEOUT = 15


# ---------------------------------------------------------------------------------------
# processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
    """Sends `sig`, waits, kills on timeout; returns the exit code."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    return proc.returncode


class Proc:
    """A child process whose stdout and stderr go to files (nothing blocks on a full pipe)."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict | None = None):
        self.name = name
        self.argv = argv
        log_dir.mkdir(parents=True, exist_ok=True)
        stem = f"{name}-{uuid.uuid4().hex[:6]}"
        self.stdout_path = log_dir / f"{stem}.stdout"
        self.stderr_path = log_dir / f"{stem}.stderr"
        self._stdout = open(self.stdout_path, "wb")
        self._stderr = open(self.stderr_path, "wb")
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=self._stderr,
            env=env,
            cwd=log_dir,
        )

    def first_line(self, prefix: str, timeout: float = 30) -> str:
        """Waits for the first stdout line and checks it starts with `prefix`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.stdout_path.read_text(errors="replace")
            if "\n" in text:
                line = text.split("\n", 1)[0]
                assert line.startswith(prefix), f"{self.name}: first stdout line {line!r}, expected {prefix}...\n{self.logs()}"
                return line
            if self.popen.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"{self.name} did not print {prefix!r} (exit {self.popen.poll()})\n{self.logs()}")

    def logs(self, tail: int = 4000) -> str:
        out = self.stdout_path.read_text(errors="replace")[-tail:]
        err = self.stderr_path.read_text(errors="replace")[-tail:]
        return f"--- {self.name} stdout ---\n{out}\n--- {self.name} stderr ---\n{err}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        code = stop_process(self.popen, sig, timeout)
        self._stdout.close()
        self._stderr.close()
        return code


def wait_port(port: int, proc: Proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise AssertionError(f"{proc.name} exited with {proc.popen.returncode}\n{proc.logs()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{proc.name} did not listen on port {port}\n{proc.logs()}")


# ---------------------------------------------------------------------------------------
# session fixtures: binaries, backends, moto


@pytest.fixture(scope="session")
def binaries() -> dict[str, Path]:
    missing = [str(p) for p in (BATCHD, BATCHD_FAKE) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)}: run scripts/pytest.sh (it builds them with "
            "`cargo build -p batchd -p batchd-testkit`)",
            pytrace=False,
        )
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: the tests read the shared example records", pytrace=False)
    return {"batchd": BATCHD, "fake": BATCHD_FAKE}


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("session")


@dataclass
class Fake:
    proc: Proc
    base_url: str

    def stats(self) -> dict:
        import urllib.request

        root = self.base_url.removesuffix("/v1")
        with urllib.request.urlopen(f"{root}/fake/stats", timeout=10) as r:
            return json.load(r)


def start_fake(binaries, log_dir: Path, name: str, *args: str) -> Fake:
    proc = Proc(name, [str(binaries["fake"]), "--port", "0", "--threads", "1", *args], log_dir)
    line = proc.first_line("listening on http://127.0.0.1:")
    return Fake(proc, line.removeprefix("listening on ").strip())


@pytest.fixture(scope="session")
def fake(binaries, session_dir):
    """The fast backend: answers at once (a little jitter keeps completions out of order)."""
    f = start_fake(
        binaries, session_dir, "fake", "--latency-jitter-ms", "10", "--fail-when-prompt-contains", FAIL_MARKER
    )
    yield f
    f.proc.stop()


@pytest.fixture(scope="session")
def slow_fake(binaries, session_dir):
    """The slow backend: 150-250 ms per record."""
    f = start_fake(
        binaries,
        session_dir,
        "slow-fake",
        "--latency-ms",
        str(SLOW_LATENCY_MS),
        "--latency-jitter-ms",
        str(SLOW_JITTER_MS),
    )
    yield f
    f.proc.stop()


@dataclass
class Moto:
    proc: Proc
    endpoint: str

    def s3(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 3}),
        )


@pytest.fixture(scope="session")
def moto(session_dir):
    server = os.environ.get("BATCHD_TEST_MOTO_SERVER")
    if not server or not os.access(server, os.X_OK):
        pytest.fail(
            f"BATCHD_TEST_MOTO_SERVER ({server!r}) is not an executable moto_server: run scripts/pytest.sh",
            pytrace=False,
        )
    port = free_port()
    proc = Proc("moto", [server, "-H", "127.0.0.1", "-p", str(port)], session_dir, env=clean_env())
    wait_port(port, proc)
    yield Moto(proc, f"http://127.0.0.1:{port}")
    proc.stop()


def clean_env(**extra: str) -> dict:
    """The environment without anything AWS from the machine, plus dummy credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_REGION=REGION,
        AWS_DEFAULT_REGION=REGION,
        AWS_EC2_METADATA_DISABLED="true",
    )
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------
# buckets: one view over moto and local-bucket mode


class Buckets:
    """`s3://bucket/key` as batchd sees it: moto objects (s3 mode) or files (local mode)."""

    def __init__(self, mode: str, data_dir: Path, moto: Moto | None):
        self.mode = mode
        self.data_dir = data_dir
        self.s3 = moto.s3() if mode == "s3" else None

    def create(self, bucket: str) -> None:
        if self.s3 is not None:
            self.s3.create_bucket(Bucket=bucket)
        else:
            (self.data_dir / "buckets" / bucket).mkdir(parents=True, exist_ok=True)

    def put(self, bucket: str, key: str, data: bytes | str) -> str:
        if isinstance(data, str):
            data = data.encode()
        if self.s3 is not None:
            self.s3.put_object(Bucket=bucket, Key=key, Body=data)
        else:
            path = self.data_dir / "buckets" / bucket / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return f"s3://{bucket}/{key}"

    def get(self, bucket: str, key: str) -> bytes:
        if self.s3 is not None:
            return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        return (self.data_dir / "buckets" / bucket / key).read_bytes()

    def keys(self, bucket: str, prefix: str) -> list[str]:
        """Every key under `prefix`, sorted."""
        if self.s3 is not None:
            keys = []
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                keys.extend(o["Key"] for o in page.get("Contents", []))
            return sorted(keys)
        root = self.data_dir / "buckets" / bucket
        if not root.is_dir():
            return []
        found = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        return sorted(k for k in found if k.startswith(prefix))


# ---------------------------------------------------------------------------------------
# batchd serve


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))


def render_config(sections: dict, models: list[dict]) -> str:
    out = []
    for name, values in sections.items():
        out.append(f"[{name}]")
        out.extend(f"{k} = {toml_value(v)}" for k, v in values.items())
        out.append("")
    for m in models:
        out.append("[[models]]")
        out.extend(f"{k} = {toml_value(v)}" for k, v in m.items())
        out.append("")
    return "\n".join(out)


def client_config(validate: bool = True) -> Config:
    return Config(
        region_name=REGION,
        parameter_validation=validate,
        retries={"total_max_attempts": 1},
        connect_timeout=5,
        read_timeout=30,
    )


@dataclass
class Server:
    proc: Proc
    url: str
    mode: str
    data_dir: Path
    config_path: Path
    env: dict
    buckets: Buckets
    argv: list[str] = field(default_factory=list)

    def client(self, validate: bool = True, key: tuple[str, str] = ("test", "test"), service: str = "bedrock"):
        """A boto3 client of the server (`bedrock` by default); `key` is (access key id,
        secret) (the dummy pair works while the server has no keys)."""
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=key[0],
            aws_secret_access_key=key[1],
            config=client_config(validate),
        )

    def s3(self, key: tuple[str, str] = ("test", "test")):
        """A boto3 `s3` client on the server's own S3 API (the local buckets)."""
        return self.client(key=key, service="s3")

    def aws(self, *args: str, check: bool = True, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
        """Runs `aws <args> --endpoint-url <server>` (the AWS CLI of the venv, no user config);
        `env` adds variables (AWS_ACCESS_KEY_ID=...)."""
        argv = [str(AWS_CLI), *args, "--endpoint-url", self.url, "--region", REGION]
        result = subprocess.run(
            argv,
            env=clean_env(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_PAGER="", **env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            assert result.returncode == 0, f"{argv}\nexit {result.returncode}\n{result.stderr}"
        return result

    @property
    def bedrock(self):
        if not hasattr(self, "_bedrock"):
            self._bedrock = self.client()
        return self._bedrock

    @property
    def bedrock_raw(self):
        """No client-side parameter validation: what the server says is what the test sees."""
        if not hasattr(self, "_bedrock_raw"):
            self._bedrock_raw = self.client(validate=False)
        return self._bedrock_raw

    def stop(self, sig: int = signal.SIGTERM) -> int:
        return self.proc.stop(sig)


class ServerFactory:
    def __init__(self, binaries, fake: Fake, slow_fake: Fake, moto_getter, base_dir: Path):
        self.binaries = binaries
        self.fake = fake
        self.slow_fake = slow_fake
        self.moto_getter = moto_getter
        self.base_dir = base_dir
        self.started: list[Server] = []

    def config_text(self, mode: str, moto: Moto | None, overrides: dict | None) -> str:
        sections = {
            "storage": {},
            "limits": {
                "max_running_jobs": 4,
                "max_jobs_per_model": 20,
                "timeout_unit_seconds": 3600,
                "default_timeout_hours": 24,
            },
            "quotas": {
                "records_per_input_file": 50000,
                "records_per_job": 50000,
                "min_records_per_job": 1,
                "input_file_size_gb": 1.0,
                "job_size_gb": 5.0,
            },
            "engine": {"backoff_base_ms": 1},
        }
        if mode == "s3":
            sections["storage"]["s3_endpoint"] = moto.endpoint
        for name, values in (overrides or {}).items():
            sections.setdefault(name, {}).update(values)
        models = [
            {"id": FAST_MODEL, "backend": "openai", "base_url": self.fake.base_url, "max_concurrency": 8},
            {
                "id": SLOW_MODEL,
                "backend": "openai",
                "base_url": self.slow_fake.base_url,
                "max_concurrency": SLOW_CONCURRENCY,
            },
        ]
        return render_config(sections, models)

    def start(
        self,
        mode: str = "s3",
        overrides: dict | None = None,
        data_dir: Path | None = None,
        config_path: Path | None = None,
        extra_toml: str = "",
        env: dict | None = None,
        listen: str = "127.0.0.1:0",
        tls: tuple[Path, Path] | None = None,
        args: tuple[str, ...] = (),
    ) -> Server:
        """Starts `batchd serve`; with `data_dir` and `config_path` given, restarts on them.
        `extra_toml` is appended to the config (`[[auth.keys]]` entries), `env` added to the
        server's environment, `args` put before `serve` (`--log-format json`)."""
        assert mode in ("s3", "local")
        moto = self.moto_getter() if mode == "s3" else None
        if data_dir is None:
            data_dir = self.base_dir / f"batchd-{mode}-{uuid.uuid4().hex[:8]}"
            data_dir.mkdir(parents=True)
        if config_path is None:
            config_path = data_dir.parent / f"{data_dir.name}.toml"
            config_path.write_text(self.config_text(mode, moto, overrides) + "\n" + extra_toml)
        extra_env = env or {}
        env = clean_env(BATCHD_LOG=os.environ.get("BATCHD_TEST_LOG", "warn"))
        env.update(extra_env)
        argv = [
            str(self.binaries["batchd"]),
            *args,
            "serve",
            "--listen",
            listen,
            "--data-dir",
            str(data_dir),
            "--config",
            str(config_path),
        ]
        if tls:
            argv += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        proc = Proc("batchd-serve", argv, data_dir.parent / "logs", env=env)
        host = listen.rsplit(":", 1)[0]
        line = proc.first_line(f"listening on {'https' if tls else 'http'}://{host}:")
        # A server on every address is reached on loopback.
        url = line.removeprefix("listening on ").strip().replace("0.0.0.0", "127.0.0.1")
        server = Server(proc, url, mode, data_dir, config_path, env, Buckets(mode, data_dir, moto), argv)
        self.started.append(server)
        return server

    def stop_all(self) -> None:
        for s in self.started:
            s.stop()


def _factory(request, binaries, fake, slow_fake, base_dir) -> ServerFactory:
    # moto is only started when an s3-mode server needs it.
    return ServerFactory(binaries, fake, slow_fake, lambda: request.getfixturevalue("moto"), base_dir)


@pytest.fixture
def start_server(request, binaries, fake, slow_fake, tmp_path):
    """A factory of `batchd serve` processes that live as long as the test."""
    factory = _factory(request, binaries, fake, slow_fake, tmp_path)
    yield factory.start
    factory.stop_all()


@pytest.fixture(scope="module")
def module_servers(request, binaries, fake, slow_fake, tmp_path_factory):
    """Shared servers of one module (default config), one per mode, started on first use."""
    factory = _factory(request, binaries, fake, slow_fake, tmp_path_factory.mktemp("module"))
    servers: dict[str, Server] = {}

    def get(mode: str) -> Server:
        if mode not in servers:
            servers[mode] = factory.start(mode)
        return servers[mode]

    yield get
    factory.stop_all()


@pytest.fixture(scope="module")
def s3_server(module_servers) -> Server:
    return module_servers("s3")


@pytest.fixture
def bucket_name() -> str:
    return f"bkt-{uuid.uuid4().hex[:12]}"


# ---------------------------------------------------------------------------------------
# helpers


def wait_for_status(client, job: str, statuses=None, timeout: float = 60, interval: float = 0.1) -> dict:
    """Polls GetModelInvocationJob until its status is in `statuses` (default: any ended
    status); fails with the last response on timeout, or when the job ends in another status."""
    wanted = set(statuses) if statuses else ENDED
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = client.get_model_invocation_job(jobIdentifier=job)
        if last["status"] in wanted:
            return last
        if last["status"] in ENDED:
            raise AssertionError(f"job ended {last['status']} while waiting for {sorted(wanted)}: {last}")
        if time.monotonic() > deadline:
            raise AssertionError(f"job still {last['status']} after {timeout}s, waiting for {sorted(wanted)}: {last}")
        time.sleep(interval)


@pytest.fixture
def wait_status():
    return wait_for_status


def http_json(method: str, url: str, body: dict | None = None, token: str | None = None):
    """(status, headers, body) of a plain HTTP request: JSON when the answer is JSON, else
    text. Unsigned: fine on a server without keys; `token` sends a bearer key."""
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            status, headers, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, headers, raw = e.code, e.headers, e.read()
    if (headers.get("Content-Type") or "").startswith("application/json"):
        return status, headers, json.loads(raw)
    return status, headers, raw.decode(errors="replace")


def fresh_pg_database() -> str:
    """The URL of a new, empty database on scripts/pg.sh's server (BATCHD_TEST_PG_URL, set by
    scripts/test.sh); skips outside CI when there is none, fails under CI."""
    import urllib.parse

    admin = os.environ.get("BATCHD_TEST_PG_URL")
    if not admin:
        if os.environ.get("CI"):
            pytest.fail("BATCHD_TEST_PG_URL is not set: scripts/test.sh starts PostgreSQL with scripts/pg.sh")
        pytest.skip("no PostgreSQL server (BATCHD_TEST_PG_URL)")
    name = f"batchd_py_{uuid.uuid4().hex[:12]}"
    subprocess.run(["psql", admin, "-qc", f"CREATE DATABASE {name}"], check=True, capture_output=True)
    return urllib.parse.urlparse(admin)._replace(path=f"/{name}").geturl()


def metric_sum(server_url: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus series' samples on a server's GET /metrics whose labels
    include `labels` (0 when there is none)."""
    import urllib.request

    with urllib.request.urlopen(f"{server_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        if series.split("{", 1)[0] != name:
            continue
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


def client_error(excinfo) -> tuple[str, int, str]:
    """The error code, HTTP status and message of a `pytest.raises(ClientError)` result."""
    r = excinfo.value.response
    return r["Error"]["Code"], r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Message"]


def job_id_of(arn: str) -> str:
    return arn.rsplit("/", 1)[1]


def converse_line(record_id: str, text: str, max_tokens: int = 32) -> str:
    return json.dumps(
        {
            "recordId": record_id,
            "modelInput": {
                "messages": [{"role": "user", "content": [{"text": text}]}],
                "inferenceConfig": {"maxTokens": max_tokens},
            },
        }
    )


def records(n: int, prefix: str = "rec") -> tuple[str, list[str]]:
    """A JSONL body of `n` Converse records and their recordIds."""
    ids = [f"{prefix}{i:05d}" for i in range(n)]
    body = "".join(converse_line(rid, f"prompt number {i} for {rid}") + "\n" for i, rid in enumerate(ids))
    return body, ids


def create_job(client, name: str, input_uri: str, output_uri: str, model: str = FAST_MODEL, **extra) -> str:
    params = dict(
        jobName=name,
        roleArn=ROLE_ARN,
        modelId=model,
        inputDataConfig={"s3InputDataConfig": {"s3Uri": input_uri}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": output_uri}},
        modelInvocationType="Converse",
    )
    params.update(extra)
    return client.create_model_invocation_job(**params)["jobArn"]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def parse_jsonl(data: bytes) -> list[dict]:
    text = data.decode()
    assert text == "" or text.endswith("\n"), f"output does not end with a newline: {text[-200:]!r}"
    return [json.loads(line) for line in text.splitlines()]


def check_output_line(line: dict, input_record: dict) -> None:
    """One output line: the success or error shape, modelInput echoed."""
    assert line["recordId"] == input_record["recordId"]
    assert line["modelInput"] == input_record["modelInput"]
    if "modelOutput" in line:
        assert set(line) == {"recordId", "modelInput", "modelOutput"}, line
        out = line["modelOutput"]
        assert out["output"]["message"]["role"] == "assistant"
        content = out["output"]["message"]["content"]
        assert isinstance(content, list) and content and isinstance(content[0]["text"], str)
        assert out["stopReason"] in {"end_turn", "max_tokens", "stop_sequence", "tool_use"}
        usage = out["usage"]
        assert usage["inputTokens"] >= 0 and usage["outputTokens"] >= 0
        assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]
        assert isinstance(out["metrics"]["latencyMs"], int)
    else:
        assert set(line) == {"recordId", "modelInput", "error"}, line
        assert set(line["error"]) == {"errorCode", "errorMessage"}, line
        assert isinstance(line["error"]["errorCode"], int)
        assert isinstance(line["error"]["errorMessage"], str) and line["error"]["errorMessage"]


def expected_manifest(lines: list[dict], total: int) -> dict:
    ok = [line for line in lines if "modelOutput" in line]
    return {
        "totalRecordCount": total,
        "processedRecordCount": len(lines),
        "successRecordCount": len(ok),
        "errorRecordCount": len(lines) - len(ok),
        "inputTokenCount": sum(line["modelOutput"]["usage"]["inputTokens"] for line in ok),
        "outputTokenCount": sum(line["modelOutput"]["usage"]["outputTokens"] for line in ok),
    }


def read_manifest(buckets: Buckets, bucket: str, out_prefix: str, job_id: str) -> dict:
    manifest = json.loads(buckets.get(bucket, f"{out_prefix}{job_id}/manifest.json.out"))
    assert set(manifest) == MANIFEST_KEYS, manifest
    return manifest
