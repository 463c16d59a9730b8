#!/usr/bin/env python3
"""Checks that bindgen (llama-cpp-sys-2's build) will find a working libclang.

Looks where clang-sys looks ($LIBCLANG_PATH, `llvm-config --libdir`, the usual lib dirs), for
the file names it accepts (libclang.so, libclang-*.so, libclang.so.*, libclang-*.so.*; never
libclang-cpp, the C++ library Debian ships on its own), loads each with ctypes and parses a C
file that includes <stddef.h>, <stdint.h> and <stdbool.h> through the C API bindgen uses. A
look-alike file fails to load or lacks the symbols; a libclang without its resource headers
(libclang1-NN alone) fails the parse. Prints what it found; exit 0 only if one parsed cleanly.
"""
import ctypes
import glob
import os
import subprocess
import sys
import tempfile

# `--only DIR` searches DIR alone (the tests use it to show what the probe rejects).
ONLY = sys.argv[2] if len(sys.argv) == 3 and sys.argv[1] == "--only" else None
PATTERNS = ("libclang.so", "libclang-*.so", "libclang.so.*", "libclang-*.so.*")


def search_dirs():
    if ONLY:
        return [ONLY]
    dirs = []
    env = os.environ.get("LIBCLANG_PATH")
    if env:
        dirs.append(env)
    try:
        out = subprocess.run(["llvm-config", "--libdir"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            dirs.append(out.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    dirs += sorted(glob.glob("/usr/lib/llvm-*/lib"), reverse=True)
    dirs += glob.glob("/usr/lib/*-linux-gnu") + ["/usr/lib", "/usr/local/lib", "/usr/lib64", "/lib"]
    seen, unique = set(), []
    for d in dirs:
        if os.path.isdir(d) and d not in seen:
            seen.add(d)
            unique.append(d)
    return unique


def candidates():
    found = []
    for d in search_dirs():
        for pattern in PATTERNS:
            for path in sorted(glob.glob(os.path.join(d, pattern))):
                # clang-sys skips the C++ library too: it is not libclang.
                if os.path.basename(path).startswith("libclang-cpp"):
                    continue
                if os.path.isfile(path) and path not in found:
                    found.append(path)
    return found


def try_parse(path):
    """None if `path` is a libclang that parses a C file with the standard headers, else why not."""
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        return f"does not load ({e})"
    try:
        create_index = lib.clang_createIndex
        parse = lib.clang_parseTranslationUnit
        num_diags = lib.clang_getNumDiagnostics
        get_diag = lib.clang_getDiagnostic
        severity = lib.clang_getDiagnosticSeverity
        spelling = lib.clang_getDiagnosticSpelling
        get_cstring = lib.clang_getCString
    except AttributeError as e:
        return f"is not libclang (missing {e})"
    create_index.restype = ctypes.c_void_p
    create_index.argtypes = [ctypes.c_int, ctypes.c_int]
    parse.restype = ctypes.c_void_p
    parse.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int,
                      ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    num_diags.restype = ctypes.c_uint
    num_diags.argtypes = [ctypes.c_void_p]
    get_diag.restype = ctypes.c_void_p
    get_diag.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    severity.restype = ctypes.c_int
    severity.argtypes = [ctypes.c_void_p]

    class CXString(ctypes.Structure):
        _fields_ = [("data", ctypes.c_void_p), ("flags", ctypes.c_uint)]

    spelling.restype = CXString
    spelling.argtypes = [ctypes.c_void_p]
    get_cstring.restype = ctypes.c_char_p
    get_cstring.argtypes = [CXString]

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.h")
        with open(src, "w") as f:
            f.write("#include <stddef.h>\n#include <stdint.h>\n#include <stdbool.h>\n"
                    "typedef struct { size_t n; int32_t x; bool b; } probe_t;\n")
        args = (ctypes.c_char_p * 2)(b"-x", b"c")
        index = create_index(0, 0)
        unit = parse(index, src.encode(), args, 2, None, 0, 0)
        if not unit:
            return "loads, but cannot parse a C file"
        errors = []
        for i in range(num_diags(unit)):
            d = get_diag(unit, i)
            if severity(d) >= 3:  # CXDiagnostic_Error
                errors.append(get_cstring(spelling(d)).decode(errors="replace"))
        if errors:
            return "loads, but parsing <stddef.h> fails (" + "; ".join(errors[:2]) + ")"
    return None


def main():
    found = candidates()
    if not found:
        print("no libclang shared library found (searched: " + ", ".join(search_dirs()) + ")")
        return 1
    for path in found:
        why = try_parse(path)
        if why is None:
            print(f"{path} (parses <stddef.h>, <stdint.h>, <stdbool.h>)")
            return 0
        print(f"{path} {why}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
