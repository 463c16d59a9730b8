"""The fresh-machine probes (scripts/libclang-probe.py, scripts/fresh-check.sh) tell the real
thing from a look-alike: a machine with only libclang-cpp (what the base image ships) must fail
the libclang probe, as bindgen would, instead of passing as it once did."""
import glob
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROBE = os.path.join(REPO, "scripts", "libclang-probe.py")


def probe(directory):
    return subprocess.run([sys.executable, PROBE, "--only", str(directory)],
                          capture_output=True, text=True, timeout=60)


def system_lib(pattern):
    for d in ["/usr/lib/llvm-*/lib", "/usr/lib/*-linux-gnu"]:
        for path in sorted(glob.glob(os.path.join(d, pattern))):
            return path
    return None


def test_libclang_cpp_alone_is_not_libclang(tmp_path):
    # Its name is skipped, as clang-sys skips it.
    cpp = system_lib("libclang-cpp.so*")
    if cpp is None:
        pytest.skip("no libclang-cpp on this machine")
    shutil.copy(cpp, tmp_path / os.path.basename(cpp))
    r = probe(tmp_path)
    assert r.returncode == 1, r.stdout
    assert "no libclang shared library found" in r.stdout


def test_look_alikes_under_libclang_names_are_rejected(tmp_path):
    (tmp_path / "libclang-99.so").write_text("not a shared library\n")
    cpp = system_lib("libclang-cpp.so*")
    if cpp is not None:
        shutil.copy(cpp, tmp_path / "libclang.so")
    r = probe(tmp_path)
    assert r.returncode == 1, r.stdout
    assert "libclang-99.so does not load" in r.stdout
    if cpp is not None:
        assert "libclang.so is not libclang (missing" in r.stdout


def test_the_real_libclang_parses_and_fresh_check_passes(tmp_path):
    # setup.sh (run by every test command) installed libclang-dev if it was missing.
    real = system_lib("libclang.so*") or system_lib("libclang-[0-9]*.so*")
    assert real is not None, "setup.sh should have installed libclang-dev"
    shutil.copy(real, tmp_path / "libclang.so")
    r = probe(tmp_path)
    assert r.returncode == 0, r.stdout
    assert "parses <stddef.h>" in r.stdout
    check = subprocess.run(["bash", os.path.join(REPO, "scripts", "fresh-check.sh")],
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "ok   libclang" in check.stdout
