"""Tidy checks that keep ARCHITECTURE.md true: the crate dependency rules (from `cargo metadata`,
transitively, normal dependencies only), environment reads only in the binary, every crate in
the code map, every module with its `//!` line, and the lints that keep `unwrap()`/`expect()`
out of non-test code switched on for every crate."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CRATES = sorted(p.parent for p in (ROOT / "crates").glob("*/Cargo.toml"))

RUNTIME = {"tokio", "tokio-util", "futures", "futures-util", "async-std", "smol", "mio"}
HTTP = {"reqwest", "hyper", "hyper-util", "axum", "http", "tower", "h2", "aws-sigv4"}
JSON = {"serde_json", "simd-json", "sonic-rs"}
STORE = {"batchd-store", "sqlx"}
EXPORTER = {"metrics-exporter-prometheus", "metrics-util"}

# (crate, what it must never depend on, even transitively; the invariant it keeps)
RULES = [
    ("batchd-core", RUNTIME | HTTP | JSON | STORE, "invariant 1: core does no IO, no runtime, HTTP or JSON"),
    ("batchd-backends", STORE | {"batchd-engine"}, "backends never on the store or the engine"),
    ("batchd-api", STORE | {"batchd-engine"}, "the API knows the job model, not the store"),
    ("batchd-formats", RUNTIME | HTTP | STORE, "formats are pure translation"),
    ("batchd-engine", EXPORTER, "the engine records through the metrics facade; the binary exports"),
    ("batchd-api", EXPORTER, "the API records through the metrics facade; the binary exports"),
]

# Crates that may read the environment: the binary (invariant 8) and the dev-only ones.
ENV_READERS = {"batchd", "batchd-testkit", "batchd-bench"}


@cache
def metadata() -> dict:
    host = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    triple = re.search(r"^host: (\S+)", host, re.M).group(1)
    # For this platform only: other platforms' crates (windows-sys, ...) are never fetched.
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--filter-platform", triple],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def normal_deps_closure(crate: str) -> set[str]:
    """Names of every package `crate` depends on through normal (non-dev, non-build) edges."""
    meta = metadata()
    names = {p["id"]: p["name"] for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    start = next(pid for pid, name in names.items() if name == crate and pid in nodes)
    seen: set[str] = set()
    todo = [start]
    while todo:
        for dep in nodes[todo.pop()]["deps"]:
            if any(k["kind"] is None for k in dep["dep_kinds"]) and dep["pkg"] not in seen:
                seen.add(dep["pkg"])
                todo.append(dep["pkg"])
    return {names[pid] for pid in seen}


@pytest.mark.parametrize("crate,forbidden,why", RULES, ids=[r[0] for r in RULES])
def test_crate_dependency_rules(crate, forbidden, why):
    found = sorted(normal_deps_closure(crate) & forbidden)
    assert not found, f"{crate} depends on {found}: {why}"


def test_the_dependency_check_sees_real_edges():
    # Guards the check itself: if metadata parsing broke, every rule above would pass.
    assert "batchd-core" in normal_deps_closure("batchd-engine")
    assert "tokio" in normal_deps_closure("batchd-engine")
    assert "sqlx" in normal_deps_closure("batchd-store")


def rust_files(crate: Path, sub: str = "src") -> list[Path]:
    return sorted((crate / sub).rglob("*.rs"))


def test_only_the_binary_reads_the_environment():
    pattern = re.compile(r"\benv::vars?(_os)?\b")
    offenders = []
    for crate in CRATES:
        if crate.name in ENV_READERS:
            continue
        for f in rust_files(crate):
            # Programs (src/main.rs, src/bin/) are binaries: they may.
            if f.name == "main.rs" or "bin" in f.relative_to(crate / "src").parts[:-1]:
                continue
            for n, line in enumerate(f.read_text().splitlines(), 1):
                if pattern.search(line) and not line.lstrip().startswith("//"):
                    offenders.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "invariant 8 (read the environment in the binary only):\n" + "\n".join(offenders)


def test_every_crate_is_in_the_code_map():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    code_map = text.split("## Code map", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([a-z0-9-]+)` \|", code_map, re.M))
    crates = {c.name for c in CRATES}
    assert crates - listed == set(), f"crates missing from ARCHITECTURE.md's code map: {crates - listed}"
    assert listed - crates == set(), f"code map rows for crates that do not exist: {listed - crates}"


def test_every_module_says_what_it_is_for():
    missing = [
        str(f.relative_to(ROOT))
        for crate in CRATES
        for sub in ("src", "tests")
        if (crate / sub).is_dir()
        for f in rust_files(crate, sub)
        if not f.read_text().startswith("//!")
    ]
    assert not missing, "modules without a leading //! line:\n" + "\n".join(missing)


def test_unwrap_and_expect_are_lints_on_every_crate():
    """clippy (`-D warnings` in scripts/test.sh) refuses `unwrap()`/`expect()` outside tests;
    this keeps that switched on for every crate."""
    root = tomllib.loads((ROOT / "Cargo.toml").read_text())
    lints = root["workspace"]["lints"]["clippy"]
    for lint in ("unwrap_used", "expect_used"):
        assert lints.get(lint) in ("warn", "deny"), f"workspace lint {lint} is {lints.get(lint)!r}"
    clippy = tomllib.loads((ROOT / "clippy.toml").read_text())
    assert clippy.get("allow-unwrap-in-tests") and clippy.get("allow-expect-in-tests")
    for crate in CRATES:
        manifest = tomllib.loads((crate / "Cargo.toml").read_text())
        assert manifest.get("lints", {}).get("workspace") is True, f"{crate.name}: [lints] workspace = true"
    assert "-D warnings" in (ROOT / "scripts/test.sh").read_text()
