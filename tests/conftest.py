"""Shared fixtures: the Keras-built models and their stored predictions."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "keras"
REFUSED = FIXTURES / "refused"
ONNX_FIXTURES = Path(__file__).parent / "fixtures" / "onnx"


def _manifest() -> dict:
    out = {}
    for path in sorted(FIXTURES.glob("manifest.*.json")):
        out.update(json.loads(path.read_text()))
    return out


MANIFEST = _manifest()
MODEL_FILES = sorted(MANIFEST)


def fixture_path(name: str) -> Path:
    return FIXTURES / name


def fixture_data(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / MANIFEST[name]["npz"]) as d:
        return {k: d[k] for k in d.files}


def fixture_inputs(data: dict, kind: str) -> list[np.ndarray]:
    n = sum(1 for k in data if k.startswith(f"x_{kind}_"))
    return [data[f"x_{kind}_{j}"] for j in range(n)]


def run_cli(*args, check=True, **kw) -> subprocess.CompletedProcess:
    """``python -m ismkernel ARGS`` in a child process; with ``check``, a
    non-zero exit fails with its standard error."""
    proc = subprocess.run(
        [sys.executable, "-m", "ismkernel", *map(str, args)],
        capture_output=True,
        text=True,
        **kw,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


def random_fasta(path, n: int, length: int, seed: int = 0):
    """``n`` random ACGT records ``s0, s1, ...`` of ``length`` bases at ``path``."""
    rng = np.random.default_rng(seed)
    Path(path).write_text(
        "".join(
            f">s{i}\n{''.join(rng.choice(list('ACGT'), length))}\n" for i in range(n)
        )
    )
    return path


def onnx_manifest() -> dict:
    return json.loads((ONNX_FIXTURES / "manifest.json").read_text())


def assert_same_ism(ref, cpu, what=""):
    """The cpu backend against the reference: max |difference| <= 1e-4 x max
    |output|."""
    for k, (a, b) in enumerate(zip(ref.outputs, cpu.outputs)):
        assert a.shape == b.shape
        scale = max(float(np.abs(a).max()), 1e-30)
        err = float(np.abs(a - b).max()) / scale
        assert err <= 1e-4, f"{what} output {k}: rel err {err:.2e}"
    for a, b in zip(ref.reference, cpu.reference):
        # BLAS may block a GEMM differently for another batch size.
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(a).max())


def assert_close_keras(comp: np.ndarray, ref: np.ndarray, what: str) -> None:
    """The issue's tolerance against Keras: rtol 1e-5, atol 1e-6."""
    assert comp.shape == ref.shape, f"{what}: shape {comp.shape} != Keras {ref.shape}"
    np.testing.assert_allclose(comp, ref, rtol=1e-5, atol=1e-6, err_msg=what)


def edit_h5_config(path, edit) -> None:
    """Apply ``edit`` to the JSON ``model_config`` of the HDF5 model at ``path``."""
    with h5py.File(path, "r+") as f:
        raw = f.attrs["model_config"]
        cfg = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        edit(cfg)
        f.attrs["model_config"] = json.dumps(cfg)


def rewrite_keras(
    name, dst_dir, edit_config=None, edit_weights=None, drop=(), replace=None
):
    """A copy of the ``.keras`` fixture ``name`` in ``dst_dir`` with members
    dropped or replaced, its config edited, or its weights file edited."""
    src = zipfile.ZipFile(fixture_path(name))
    dst_path = Path(dst_dir) / "model.keras"
    with zipfile.ZipFile(dst_path, "w") as dst:
        for member in src.namelist():
            if member in drop:
                continue
            blob = (replace or {}).get(member, src.read(member))
            if member == "config.json" and edit_config:
                cfg = json.loads(blob)
                edit_config(cfg)
                blob = json.dumps(cfg).encode()
            if member == "model.weights.h5" and edit_weights:
                buf = io.BytesIO(blob)
                with h5py.File(buf, "r+") as f:
                    edit_weights(f)
                blob = buf.getvalue()
            dst.writestr(member, blob)
    return dst_path


@pytest.fixture(params=MODEL_FILES)
def model_file(request) -> str:
    return request.param


def incremental_backends() -> list[str]:
    """Every registered backend but the reference: each is tested against it."""
    from ismkernel.backends import BACKENDS

    return [b for b in BACKENDS if b != "reference"]


@pytest.fixture(scope="session", params=incremental_backends())
def backend(request) -> str:
    """An incremental backend; skipped, with the reason, where it cannot run."""
    from ismkernel.backends import get_backend
    from ismkernel.errors import BackendUnavailableError

    try:
        get_backend(request.param)
    except BackendUnavailableError as err:
        pytest.skip(str(err))
    return request.param


@pytest.fixture
def plan_builds(monkeypatch) -> list:
    """A list that grows by one each time a backend builds a plan."""
    from ismkernel.backends import engine

    calls: list = []
    real = engine.build_plan

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "build_plan", counting)
    return calls
