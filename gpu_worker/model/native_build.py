"""Build a C source of csrc/ into a shared library with the system's C compiler, once per source, flags and compiler,
and keep it in a cache directory."""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

CSRC = Path(__file__).with_name("csrc")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC",
         *(("-mprefer-vector-width=512",) if platform.machine() in ("x86_64", "AMD64") else ()))
BUILD_TIMEOUT_S = 60.0


def build_library(source: Path, defines: tuple[str, ...] = ()) -> Path:
    """The path of the built library; raises CalledProcessError, OSError or SubprocessError where it cannot be."""
    compiler = os.environ.get("CC", "cc")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True,
                             timeout=BUILD_TIMEOUT_S).stdout
    headers = [header.read_text() for header in sorted(CSRC.glob("*.h"))]  # what the sources include
    key = hashlib.sha256("\0".join((source.read_text(), *headers, *FLAGS, *defines, version, sys.platform)).encode())
    library = _cache_dir() / f"{source.stem}-{key.hexdigest()[:16]}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    # Built beside its final name, then renamed: workers starting together never load a half-written file.
    fd, partial = tempfile.mkstemp(suffix=".so", dir=library.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *FLAGS, *defines, str(source), "-o", partial, "-lm"], capture_output=True,
                       text=True, check=True, timeout=BUILD_TIMEOUT_S)
        os.replace(partial, library)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return library


def load_library(source: Path, what: str, defines: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """Build (or find built) and load `source`; None, with the reason logged as `what` unavailable, where it fails."""
    try:
        return ctypes.CDLL(str(build_library(source, defines)))
    except subprocess.CalledProcessError as exc:
        log.warning("%s unavailable: the C compiler failed: %s", what, exc.stderr[-2000:])
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("%s unavailable (%s: %s)", what, type(exc).__name__, exc)
    return None


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gpupool" / "kernels"
