"""The scan, pairwise and design jobs: files that equal the API's results,
resume to the same bits, and refuse bad options before writing; one plan per
job; their plots; ``inspect``'s plans for windows and pairs."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import ismkernel
from ismkernel import job as job_module
from ismkernel.analyses import design, pairwise, scan
from ismkernel.cli import main
from ismkernel.errors import InputError
from ismkernel.io.results import load_results
from ismkernel.io.sequences import open_sequences
from ismkernel.job import EXAMPLE_FASTA, EXAMPLE_MODEL, IsmJob, motif_rows, run_job


def _x():
    src = open_sequences(EXAMPLE_FASTA, 200, False, "zero")
    x = np.concatenate([b for _, b in src.batches(64)])
    return x, src.names


def _job(tmp_path, name, **kw):
    kw.setdefault("quiet", True)
    return IsmJob(EXAMPLE_MODEL, EXAMPLE_FASTA, str(tmp_path / name), **kw)


def _scores(path):
    with h5py.File(path, "r") as f:
        g = list(f["outputs"].values())[0]
        return g["scores"][:], g["reference"][:]


def test_a_scan_job_writes_the_apis_scores(tmp_path):
    model = ismkernel.load_model(EXAMPLE_MODEL)
    x, _ = _x()
    for kw, patterns in (
        (dict(occlude=10), np.zeros((1, 10, 4), np.float32)),
        (dict(motifs=["TGACTCA", "AGATAAG"]), motif_rows(["TGACTCA", "AGATAAG"])[0]),
    ):
        out = run_job(_job(tmp_path, "s.h5", kind="scan", force=True, **kw))["out"]
        got, ref = _scores(out)
        want = scan(model, x, patterns, reduce="delta")
        np.testing.assert_allclose(got, want.scores[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ref, want.reference[0], rtol=1e-6)
        data = load_results(out, 0)
        assert data["kind"] == "scan"
        np.testing.assert_array_equal(data["positions"], want.starts)


def test_shuffles_do_not_depend_on_batches_and_resume_alike(tmp_path, monkeypatch):
    opts = dict(kind="scan", shuffle=12, n_shuffles=3, seed=7, positions="50:80")
    one = run_job(_job(tmp_path, "a.h5", seqs_per_batch=1, **opts))["out"]
    all_ = run_job(_job(tmp_path, "b.h5", **opts))["out"]
    # the same shuffles (other batches: other GEMM shapes, so float32 rounding)
    np.testing.assert_allclose(_scores(one)[0], _scores(all_)[0], rtol=1e-5, atol=1e-5)
    # shuffles of the sequence's own window: scored as the API scores them
    model = ismkernel.load_model(EXAMPLE_MODEL)
    x, _ = _x()
    settings = dict(starts=np.arange(50, 80), width=12, n_shuffles=3, kmer=2, seed=7)
    pats = job_module.batch_shuffles(x[:2], settings)
    np.testing.assert_array_equal(
        pats[1], job_module.batch_shuffles(x[1:2], settings)[0]
    )  # a sequence's shuffles do not depend on its batch
    want = scan(model, x[:2], pats, starts=np.arange(50, 80), reduce="delta")
    np.testing.assert_allclose(
        _scores(one)[0][:2], want.scores[0], rtol=1e-6, atol=1e-6
    )
    _interrupted(tmp_path, "c.h5", monkeypatch, **opts)
    two = run_job(_job(tmp_path, "d.h5", seqs_per_batch=2, **opts))["out"]
    np.testing.assert_array_equal(_scores(tmp_path / "c.h5")[0], _scores(two)[0])


def _interrupted(tmp_path, name, monkeypatch, **opts):
    """Run ``opts`` as a job stopped after its second batch, then resume it."""
    real = job_module._score_batch
    calls = []

    def stop(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(job_module, "_score_batch", stop)
    with pytest.raises(KeyboardInterrupt):
        run_job(_job(tmp_path, name, seqs_per_batch=2, **opts))
    monkeypatch.setattr(job_module, "_score_batch", real)
    assert 0 < load_results(tmp_path / name)["done"].sum() < 8
    run_job(_job(tmp_path, name, seqs_per_batch=2, resume=True, **opts))
    assert load_results(tmp_path / name)["done"].all()


def test_a_pairwise_job_writes_the_apis_map_and_resumes(tmp_path, monkeypatch):
    model = ismkernel.load_model(EXAMPLE_MODEL)
    x, _ = _x()
    opts = dict(kind="pairwise", max_distance=4, positions="30:60", reduce="max-abs")
    out = run_job(_job(tmp_path, "p.h5", seqs_per_batch=2, **opts))["out"]
    got, ref = _scores(out)
    want = pairwise(model, x, positions=slice(30, 60), max_distance=4, reduce="max-abs")
    np.testing.assert_allclose(got, want.scores[0], rtol=1e-5, atol=1e-5)
    data = load_results(out, 0)
    np.testing.assert_array_equal(data["positions"], want.pairs)
    np.testing.assert_array_equal(data["independent"], want.independent)
    _interrupted(tmp_path, "q.h5", monkeypatch, **opts)
    np.testing.assert_array_equal(_scores(tmp_path / "q.h5")[0], got)
    eps = run_job(_job(tmp_path, "e.h5", **{**opts, "reduce": "epistasis"}))["out"]
    np.testing.assert_allclose(_scores(eps)[0], want.epistasis(0), rtol=1e-5, atol=1e-5)


def test_a_design_job_writes_the_apis_trajectory_as_hdf5_and_fasta(
    tmp_path, monkeypatch
):
    model = ismkernel.load_model(EXAMPLE_MODEL)
    x, names = _x()
    opts = dict(kind="design", rounds=3, objective="min", positions="20:180")
    out = run_job(_job(tmp_path, "d.h5", seqs_per_batch=3, **opts))["out"]
    want = design(model, x, "min", rounds=3, positions=slice(20, 180))
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["edits"][:], want.edits)
        np.testing.assert_array_equal(f["designed"][:], want.sequences)
        g = list(f["outputs"].values())[0]
        np.testing.assert_allclose(g["scores"][:], want.objective, rtol=1e-5)
    _interrupted(tmp_path, "d2.h5", monkeypatch, **opts)
    with h5py.File(tmp_path / "d2.h5", "r") as f:
        np.testing.assert_array_equal(f["edits"][:], want.edits)
    fa = run_job(_job(tmp_path, "d.fa", **opts))["out"]
    text = (tmp_path / "d.fa").read_text().splitlines()
    assert fa.endswith("d.fa") and len(text) == 2 * len(names)
    for i, name in enumerate(names):
        assert text[2 * i].startswith(f">{name} objective=")
        edits = ",".join(f"{p}:{'ACGT'[a]}" for p, a in want.edits[i])
        assert text[2 * i].endswith(f"edits={edits}")
        rows = np.eye(4, dtype=np.float32)[["ACGT".index(c) for c in text[2 * i + 1]]]
        np.testing.assert_array_equal(rows, want.sequences[i])


def test_an_ism_job_builds_one_plan_however_many_batches(tmp_path, plan_builds):
    summary = run_job(_job(tmp_path, "i.h5", seqs_per_batch=1, reduce="l2"))
    assert summary["scored"] == 8
    assert len(plan_builds) == 1


@pytest.mark.parametrize("kind", ["scan", "pairwise", "design"])
def test_every_kind_plots(tmp_path, kind):
    pytest.importorskip("matplotlib")
    opts = {
        "scan": dict(occlude=10),
        "pairwise": dict(max_distance=5, positions="30:60"),
        "design": dict(rounds=2, positions="0:50"),
    }[kind]
    out = run_job(_job(tmp_path, f"{kind}.h5", kind=kind, **opts))["out"]
    fig = tmp_path / f"{kind}.png"
    assert main(["plot", out, "--seq", "0", "-o", str(fig)]) == 0
    assert fig.stat().st_size > 1000


def test_inspect_prints_the_fused_plan_and_window_and_pair_plans(capsys):
    assert main(["inspect", EXAMPLE_MODEL, "--width", "10", "--max-distance", "5"]) == 0
    text = capsys.readouterr().out
    assert "ISM plan (cpu backend; per mutant):" in text
    assert "Fused epilogues (cpu tactics):" in text
    assert "Epilogue(relu=True" in text
    assert "Window scan plan (windows of 10 rows, every start; per edit):" in text
    assert "Pairwise plan (pairs at most 5 apart; per double mutant):" in text
    assert "pairs provably never interact" in text


@pytest.mark.parametrize(
    "args,match",
    [
        (["scan", "--example", "-o", "{}/x.h5"], "give --motif"),
        (
            ["scan", "--example", "-o", "{}/x.h5", "--occlude", "3", "--motif", "AC"],
            "not --motif and --occlude",
        ),
        (
            ["scan", "--example", "-o", "{}/x.h5", "--motif", "ACG", "--motif", "AC"],
            r"lengths \[2, 3\]",
        ),
        (["scan", "--example", "-o", "{}/x.h5", "--motif", "AXG"], "'X' is not one"),
        (["scan", "--example", "-o", "{}/x.h5", "--occlude", "0"], "--occlude must"),
        (
            [
                "scan",
                "--example",
                "-o",
                "{}/x.h5",
                "--occlude",
                "5",
                "--positions",
                "190:200",
            ],
            "runs off sequences of length 200",
        ),
        (
            ["scan", "--example", "-o", "{}/x.npz", "--occlude", "5"],
            r"scan results are HDF5",
        ),
        (
            ["pairwise", "--example", "-o", "{}/x.h5", "--max-distance", "0"],
            "--max-distance must",
        ),
        (
            [
                "pairwise",
                "--example",
                "-o",
                "{}/x.h5",
                "--positions",
                "5:6",
                "--max-distance",
                "3",
            ],
            "no pair of the positions",
        ),
        (["design", "--example", "-o", "{}/x.h5"], "design needs --rounds"),
        (
            ["design", "--example", "-o", "{}/x.npz", "--rounds", "2"],
            r"or FASTA \(\.fa",
        ),
        (
            ["design", "--example", "-o", "{}/x.h5", "--rounds", "2", "--tasks", "3"],
            r"tasks \[3\] out of range",
        ),
        (
            ["design", "--example", "-o", "{}/x.fa", "--rounds", "2", "--resume"],
            "--resume works with HDF5 output only",
        ),
    ],
)
def test_bad_options_are_refused_before_anything_is_written(
    tmp_path, capsys, args, match
):
    args = [a.replace("{}", str(tmp_path)) for a in args]
    assert main(args) == 2
    assert pytest.importorskip("re").search(match, capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_a_job_with_other_options_is_not_resumed(tmp_path):
    run_job(_job(tmp_path, "s.h5", kind="scan", occlude=5, positions="0:20"))
    with pytest.raises(InputError, match="width"):
        run_job(
            _job(
                tmp_path, "s.h5", kind="scan", occlude=6, positions="0:20", resume=True
            )
        )
    with pytest.raises(InputError, match="not an ismkernel pairwise results file"):
        run_job(_job(tmp_path, "s.h5", kind="pairwise", max_distance=3, resume=True))


def test_outputs_are_written_in_the_models_order_not_by_name(tmp_path):
    """A model whose outputs are not in alphabetical order: each output's
    scores land in its own group (HDF5 lists groups by name)."""
    from random_graphs import Builder

    from ismkernel.ir import nodes as ops

    b = Builder(30)
    c = b.conv(b.seq, 2, 3)
    zz = b.add(ops.Activation("tanh"), [c])  # "activation_2": first output
    aa = b.add(ops.GlobalPool1D("sum"), [c])  # "globalpool1d_3"
    b.g.outputs = [zz, aa]
    b.g.output_names = ["zz_profile", "aa_count"]
    model = ismkernel.Model(b.g.finalize())
    path = tmp_path / "m.npy"
    x = np.eye(4, dtype=np.float32)[np.random.default_rng(0).integers(0, 4, (3, 30))]
    np.save(path, x)
    import pickle

    with open(tmp_path / "model.pkl", "wb") as f:
        pickle.dump(model, f)
    monkey = pytest.MonkeyPatch()
    monkey.setattr(job_module, "load_model", lambda _: model)
    try:
        out = run_job(
            IsmJob(
                str(tmp_path / "model.pkl"),
                str(path),
                str(tmp_path / "o.h5"),
                reduce="raw",
                quiet=True,
            )
        )["out"]
    finally:
        monkey.undo()
    want = ismkernel.ism(model, x)
    data = load_results(out)
    assert list(data["outputs"]) == ["zz_profile", "aa_count"]
    for k, name in enumerate(["zz_profile", "aa_count"]):
        np.testing.assert_allclose(
            data["outputs"][name]["scores"], want.outputs[k], rtol=1e-6
        )
        np.testing.assert_allclose(
            data["outputs"][name]["reference"], want.reference[k], rtol=1e-6
        )


def test_a_file_records_the_backend_that_computed_not_auto(tmp_path):
    from ismkernel.backends import resolve_backend

    out = run_job(_job(tmp_path, "a.h5", positions="0:4"))["out"]
    assert load_results(out)["attrs"]["backend"] == resolve_backend("auto")
