"""The five published SpliceAI models (Keras 2.0.5 files from the
``spliceai`` wheel) against Keras's own predictions and naive ISM.

The wheel is GPL-3.0 and never committed: ``spliceai_models`` fetches it
with pip from the package index the first time and caches the models
outside the repository (see ``tests/spliceai_models.py``). If the index
cannot be reached the tests fail, saying so; set ``ISMKERNEL_OFFLINE=1`` to
skip them instead, or ``ISMKERNEL_SPLICEAI_WHEEL`` to a wheel on disk.

Keras's outputs come from ``tests/fixtures/make_spliceai_fixtures.py``
(TensorFlow 2.21, tf-keras). Outputs are softmax probabilities (scale 1):
predictions are checked at rtol 1e-5 / atol 1e-6, and each ISM mutant's
change from the reference at atol 1e-5, i.e. 1e-5 of the output scale.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_close_keras
from spliceai_models import (
    VERSION,
    WHEEL,
    SpliceAIUnavailable,
    cache_dir,
    spliceai_models,
)

import ismkernel
from ismkernel.backends import get_backend
from ismkernel.errors import BackendUnavailableError

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).parent / "fixtures" / "spliceai" / "spliceai.npz"
ISM_ATOL = 1e-5  # of softmax outputs in [0, 1]


@pytest.fixture(scope="module")
def keras_data() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as d:
        return {k: d[k] for k in d.files}


@pytest.fixture(scope="module")
def x(keras_data) -> np.ndarray:
    codes = keras_data["codes"]
    x = np.zeros((1, len(codes), 4), np.float32)
    known = codes >= 0
    x[0, np.nonzero(known)[0], codes[known]] = 1.0
    return x


@pytest.fixture(scope="module")
def models() -> list[ismkernel.Model]:
    try:
        paths = spliceai_models()
    except SpliceAIUnavailable as err:
        msg = (
            f"SpliceAI's models could not be fetched: {err}\n"
            f"This test downloads spliceai=={VERSION} from the package index with "
            f"pip and caches its models in {cache_dir()}. Give a copy of {WHEEL} "
            "as ISMKERNEL_SPLICEAI_WHEEL=PATH, or set ISMKERNEL_OFFLINE=1 to skip."
        )
        if os.environ.get("ISMKERNEL_OFFLINE") == "1":
            pytest.skip(msg)
        pytest.fail(msg)
    return [ismkernel.load_model(p) for p in paths]


def test_predict_equals_keras_on_all_five_models(models, keras_data, x):
    for j, model in enumerate(models):
        assert model.outputs[0].shape == (None, 3)
        (comp,) = model.predict(x)
        assert_close_keras(comp[0], keras_data["pred"][j], f"spliceai{j + 1}")


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_ism_equals_keras_naive_ism_on_all_five_models(models, keras_data, x, backend):
    try:
        get_backend(backend)
    except BackendUnavailableError as err:
        pytest.skip(str(err))
    pos, rows = keras_data["positions"], keras_data["rows"]
    for j, model in enumerate(models):
        res = ismkernel.ism(model, x, positions=pos, backend=backend)
        (out,), (ref,) = res.outputs, res.reference
        assert out.shape == (1, len(pos), 4, 500, 3)
        assert_close_keras(ref[0], keras_data["pred"][j], f"spliceai{j + 1} ref")
        comp = (out - ref[:, None, None])[0][:, :, rows]
        want = keras_data["ism_delta"][j]
        err = float(np.abs(comp - want).max())
        assert err <= ISM_ATOL, f"spliceai{j + 1}: max |change - Keras's| {err:.2e}"
        # the middle positions change the splice sites a lot: not a vacuous test
        assert np.abs(want).max() > 0.5


def test_the_wheel_is_checked_before_use(tmp_path, monkeypatch):
    monkeypatch.setenv("ISMKERNEL_CACHE_DIR", str(tmp_path / "cache"))
    fake = tmp_path / WHEEL
    fake.write_bytes(b"not the wheel")
    monkeypatch.setenv("ISMKERNEL_SPLICEAI_WHEEL", str(fake))
    with pytest.raises(
        SpliceAIUnavailable, match=f"{WHEEL} has SHA-256 [0-9a-f]+, not"
    ):
        spliceai_models()
    monkeypatch.setenv("ISMKERNEL_SPLICEAI_WHEEL", str(tmp_path / "absent.whl"))
    with pytest.raises(SpliceAIUnavailable, match="absent.whl is not a file; point it"):
        spliceai_models()


def _package_delta_scores(y_ref, y_alt, centre, distance=50):
    """SpliceAI's delta scores and positions as its package forms them
    (``spliceai.utils.get_delta_scores``, mask off) from the ensemble's mean
    profiles ``(L, 3)``, on the rows within ``distance`` of row ``centre``."""
    lo, hi = max(0, centre - distance), min(len(y_ref), centre + distance + 1)
    y = np.stack([y_ref[lo:hi], y_alt[lo:hi]])
    idx = [
        (y[1, :, 1] - y[0, :, 1]).argmax(),
        (y[0, :, 1] - y[1, :, 1]).argmax(),
        (y[1, :, 2] - y[0, :, 2]).argmax(),
        (y[0, :, 2] - y[1, :, 2]).argmax(),
    ]
    signs_channels = [(1, 1), (-1, 1), (1, 2), (-1, 2)]
    ds = [s * (y[1, i, c] - y[0, i, c]) for i, (s, c) in zip(idx, signs_channels)]
    return np.array(ds), np.array(idx) + lo - centre


def test_ensemble_delta_scores_equal_the_package_formula_on_keras_outputs(
    models, keras_data, x
):
    """The 5-model ensemble, averaged before reducing as the package does,
    with reduce="spliceai" (±50 rows, its default) against the package's
    formula applied to the mean of Keras's own outputs."""
    pos, rows = keras_data["positions"], keras_data["rows"]
    middle = np.arange(10, 14)  # the positions whose ±50 rows are stored
    res = ismkernel.ism(models=models, x=x, positions=pos[middle], reduce="spliceai")
    assert res.stats["n_members"] == 5
    (scores,) = res.scores
    assert scores.shape == (1, 4, 4, 8)
    pred = keras_data["pred"][:, rows]  # (5, R, 3)
    y_ref = pred.mean(axis=0)
    y_alt = (pred[:, None, None] + keras_data["ism_delta"][:, middle]).mean(axis=0)
    row_of = {int(r): i for i, r in enumerate(rows)}
    big = 0.0
    for j, p in enumerate(pos[middle]):
        centre = int(p) - 5000
        window = [row_of[r] for r in range(centre - 50, centre + 51)]
        for a in range(4):
            ds, dp = _package_delta_scores(
                y_ref[window], y_alt[j, a][window], centre=50
            )
            comp = scores[0, j, a]
            np.testing.assert_allclose(comp[:4], ds, rtol=0, atol=ISM_ATOL)
            # a position is the package's, or a row whose change ties with it
            # to within the tolerance
            for f, (c, sign) in enumerate(zip((1, 1, 2, 2), (1, -1, 1, -1))):
                at = window[50 + int(comp[4 + f])]
                change = sign * (y_alt[j, a][at, c] - y_ref[at, c])
                assert abs(change - ds[f]) <= 2 * ISM_ATOL, (p, a, f)
            big = max(big, float(np.abs(ds).max()))
    assert big > 0.5  # acceptor and donor losses at the splice sites
