"""The five published SpliceAI models, from the ``spliceai`` wheel on the
package index, fetched by pip the first time they are asked for and cached
outside the repository.

The wheel (``spliceai`` 1.3.1) is GPL-3.0: it is never committed, and
nothing here copies its code. Its five Keras 2.0.5 files are extracted into
``<cache>/spliceai-1.3.1/``, where ``<cache>`` is ``$ISMKERNEL_CACHE_DIR``,
else ``$XDG_CACHE_HOME/ismkernel``, else ``~/.cache/ismkernel``. A wheel
already on disk can be given as ``$ISMKERNEL_SPLICEAI_WHEEL`` instead of
downloading it. The wheel's SHA-256 is checked either way.

Used by ``tests/test_spliceai.py``, ``tests/fixtures/make_spliceai_fixtures.py``
and ``benchmarks/bench_real.py``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

VERSION = "1.3.1"
WHEEL = f"spliceai-{VERSION}-py2.py3-none-any.whl"
WHEEL_SHA256 = "63c633b8de6803d4ffb613e6ef62f1a896fec9fc13245c0f000ff7adea279776"
MEMBERS = [f"spliceai/models/spliceai{i}.h5" for i in range(1, 6)]
#: pip's own time limit per request, and ours for the whole download.
PIP_TIMEOUT_S = 60
DOWNLOAD_TIMEOUT_S = 600


class SpliceAIUnavailable(RuntimeError):
    """The SpliceAI wheel could not be fetched or checked."""


def cache_dir() -> Path:
    """Where downloaded test data is kept (created on first use)."""
    env = os.environ.get("ISMKERNEL_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "ismkernel"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(dest: Path) -> Path:
    """The wheel, downloaded into ``dest`` by this interpreter's pip (so the
    index, proxy and certificates configured for pip are used)."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--timeout",
        str(PIP_TIMEOUT_S),
        "--dest",
        str(dest),
        f"spliceai=={VERSION}",
    ]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SpliceAIUnavailable(f"`{' '.join(cmd[2:])}` did not finish: {e}") from e
    wheel = dest / WHEEL
    if done.returncode != 0 or not wheel.is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise SpliceAIUnavailable(
            f"`pip download spliceai=={VERSION}` failed (exit {done.returncode}):\n"
            f"{tail}"
        )
    return wheel


def spliceai_models() -> list[Path]:
    """Paths of ``spliceai1.h5`` ... ``spliceai5.h5``, fetching the wheel
    into the cache if they are not there yet.

    Raises
    ------
    SpliceAIUnavailable
        The index could not be reached, or the wheel is not the one expected.
    """
    target = cache_dir() / f"spliceai-{VERSION}"
    paths = [target / Path(m).name for m in MEMBERS]
    if all(p.is_file() for p in paths):
        return paths
    target.mkdir(parents=True, exist_ok=True)
    # Another run may be filling the cache at the same time: each works in
    # its own scratch directory and renames finished files into place.
    with tempfile.TemporaryDirectory(dir=target, prefix=".fetch-") as tmp:
        scratch = Path(tmp)
        given = os.environ.get("ISMKERNEL_SPLICEAI_WHEEL")
        wheel = Path(given) if given else _download(scratch)
        if not wheel.is_file():
            raise SpliceAIUnavailable(
                f"ISMKERNEL_SPLICEAI_WHEEL={given} is not a file; point it at "
                f"{WHEEL} or unset it to download from the package index"
            )
        digest = _sha256(wheel)
        if digest != WHEEL_SHA256:
            raise SpliceAIUnavailable(
                f"{wheel} has SHA-256 {digest}, not {WHEEL_SHA256} of {WHEEL}"
            )
        with zipfile.ZipFile(wheel) as z:
            for member, path in zip(MEMBERS, paths):
                part = scratch / path.name
                with z.open(member) as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(part, path)
    return paths
