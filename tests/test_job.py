"""The ``ismkernel ism`` / ``plot`` / ``demo`` commands end to end, as a user
runs them: subprocesses on the bundled example, interrupted and resumed."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from conftest import random_fasta, run_cli

import ismkernel
from ismkernel.io.results import load_results
from ismkernel.io.sequences import encode
from ismkernel.job import EXAMPLE_FASTA, EXAMPLE_MODEL, IsmJob, run_job


def _example_x():
    names, seqs = [], []
    for line in open(EXAMPLE_FASTA):
        if line.startswith(">"):
            names.append(line[1:].strip())
            seqs.append("")
        else:
            seqs[-1] += line.strip()
    return names, np.stack([encode(s) for s in seqs])


def test_example_end_to_end_matches_the_python_api(tmp_path):
    out = tmp_path / "ex.h5"
    proc = run_cli("ism", "--example", "-o", out)
    assert "8 sequence(s) scored" in proc.stderr
    assert proc.stdout == ""  # nothing but the summary, on stderr
    res = load_results(out)
    names, x = _example_x()
    assert res["names"] == names
    assert res["done"].all()
    np.testing.assert_array_equal(res["onehot"], x)
    assert res["labels"] == ["A", "C", "G", "T"]
    attrs = res["attrs"]
    assert attrs["reduce"] == "delta" and attrs["alphabet"] == "ACGT"
    assert attrs["model_file"] == "example_model.h5"
    assert len(attrs["model_sha256"]) == 64
    assert attrs["ismkernel_version"] == ismkernel.__version__
    model = ismkernel.load_model(EXAMPLE_MODEL)
    api = ismkernel.ism(model, x)
    (stored,) = res["outputs"].values()
    np.testing.assert_allclose(stored["scores"], api.delta()[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stored["reference"], api.reference[0], rtol=1e-6)
    assert stored["axes"] == "seq,position,alternative,task"


def test_demo_writes_results_and_a_plot(tmp_path):
    pytest.importorskip("matplotlib")
    proc = run_cli("demo", "--out-dir", tmp_path)
    assert (tmp_path / "ismkernel-demo.h5").stat().st_size > 0
    png = tmp_path / "ismkernel-demo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "planted motifs" in proc.stderr


def test_the_planted_motifs_carry_the_signal(tmp_path):
    """The example model looks at its motifs: mutating them costs far more than
    mutating anywhere else."""
    out = tmp_path / "ex.h5"
    run_job(IsmJob(EXAMPLE_MODEL, EXAMPLE_FASTA, str(out), quiet=True))
    res = load_results(out, "ap1@40_gata@130")
    effect = -res["outputs"]["motif_logit"]["scores"][:, :, 0].mean(axis=1)
    inside = np.r_[40:47, 130:137]
    outside = np.setdiff1d(np.arange(200), np.r_[30:57, 120:147])
    assert effect[inside].mean() > 10 * np.abs(effect[outside]).mean()


@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf"])
def test_plot_files(tmp_path, suffix):
    pytest.importorskip("matplotlib")
    out = tmp_path / "ex.h5"
    run_job(
        IsmJob(EXAMPLE_MODEL, EXAMPLE_FASTA, str(out), quiet=True, positions="20:60")
    )
    fig = tmp_path / f"fig{suffix}"
    run_cli("plot", out, "--seq", "1", "-o", fig, "--region", "30:50")
    assert fig.stat().st_size > 1000


def test_plot_errors(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "ex.h5"
    run_job(
        IsmJob(EXAMPLE_MODEL, EXAMPLE_FASTA, str(out), quiet=True, positions="0:20")
    )
    for args, match in [
        (("--seq", "nope", "-o", tmp_path / "a.png"), "no sequence named 'nope'"),
        (("--seq", "99", "-o", tmp_path / "a.png"), "index 99 is out of range"),
        (("--seq", "0", "-o", tmp_path / "a.gif"), "must end in one of"),
        (("--seq", "0", "-o", tmp_path / "a.png", "--region", "50:60"), "holds none"),
    ]:
        proc = run_cli("plot", out, *args, check=False)
        assert proc.returncode == 2 and match in proc.stderr, proc.stderr


def _many(tmp_path, n=120):
    return random_fasta(tmp_path / "many.fa", n, 200)


def test_interrupted_run_resumes_to_the_same_file(tmp_path):
    fasta = _many(tmp_path, 150)
    common = ["--positions", "0:60", "--seqs-per-batch", "3", "-q"]
    common += ["--backend", "reference"]  # slow enough to be killed mid-run
    whole = tmp_path / "whole.h5"
    run_cli("ism", EXAMPLE_MODEL, fasta, "-o", whole, *common)

    cut = tmp_path / "cut.h5"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ismkernel",
            "ism",
            EXAMPLE_MODEL,
            fasta,
            "-o",
            cut,
            *common,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    n_done = 0
    while time.time() < deadline and proc.poll() is None:
        if cut.exists():
            try:
                with h5py.File(cut, "r", locking=False) as f:
                    n_done = int(f["done"][:].sum())
            except (OSError, KeyError):
                n_done = 0
            if n_done >= 4:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, (
        "the run finished before it could be killed"
    )
    with h5py.File(cut, "r") as f:  # valid after kill -9
        done = f["done"][:].astype(bool)
    assert 0 < done.sum() < len(done)

    # The batch layout comes from the file: no --seqs-per-batch needed.
    proc = run_cli("ism", EXAMPLE_MODEL, fasta, "-o", cut, "--resume", *common[:2])
    assert "already in the file" in proc.stderr
    a, b = load_results(whole), load_results(cut)
    assert b["done"].all()
    for name in a["outputs"]:
        for key in ("scores", "reference"):
            np.testing.assert_array_equal(
                a["outputs"][name][key], b["outputs"][name][key]
            )
    np.testing.assert_array_equal(a["onehot"], b["onehot"])
    # Resuming a finished file computes nothing.
    proc = run_cli("ism", EXAMPLE_MODEL, fasta, "-o", cut, "--resume", *common[:2])
    assert "0 sequence(s) scored, 150 already in the file" in proc.stderr
    proc = run_cli(
        "ism",
        EXAMPLE_MODEL,
        fasta,
        "-o",
        cut,
        "--resume",
        *common[:2],
        "--seqs-per-batch",
        "5",
        check=False,
    )
    assert "written with --seqs-per-batch 3, this run asks for 5" in proc.stderr


def test_resume_refuses_another_run(tmp_path):
    out = tmp_path / "ex.h5"
    run_job(IsmJob(EXAMPLE_MODEL, EXAMPLE_FASTA, str(out), quiet=True))
    proc = run_cli(
        "ism", "--example", "-o", out, "--reduce", "l2", "--resume", check=False
    )
    assert proc.returncode == 2
    assert "written with reduce='delta', this run has 'l2'" in proc.stderr
    proc = run_cli("ism", "--example", "-o", out, check=False)
    assert "exists; pass --resume" in proc.stderr


def test_ctrl_c_leaves_a_resumable_file(tmp_path):
    fasta = _many(tmp_path, 60)
    out = tmp_path / "int.h5"
    # The reference backend keeps the run long enough to be interrupted
    # however fast the machine.
    args = [EXAMPLE_MODEL, fasta, "-o", out, "--seqs-per-batch", "2", "-q"]
    args += ["--backend", "reference"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ismkernel", "ism", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # As from a terminal: a shell's background jobs inherit SIGINT ignored,
        # and then Python never raises KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.exists():
            try:
                with h5py.File(out, "r", locking=False) as f:
                    if f["done"][:].sum() >= 2:
                        proc.send_signal(signal.SIGINT)
                        break
            except (OSError, KeyError):
                pass
        time.sleep(0.01)
    _, err = proc.communicate()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    with h5py.File(out, "r") as f:
        assert 0 < f["done"][:].sum() < 60
    run_cli("ism", *args, "--resume")
    assert load_results(out)["done"].all()


def test_npz_for_tf_modisco(tmp_path):
    out = tmp_path / "ex.npz"
    run_cli(
        "ism",
        "--example",
        "-o",
        out,
        "--format",
        "npz",
        "--reduce",
        "mean-centred",
        "-q",
    )
    z = np.load(out)
    names, x = _example_x()
    assert z["onehot"].shape == z["scores"].shape == (8, 4, 200)
    np.testing.assert_array_equal(z["onehot"], x.transpose(0, 2, 1))
    assert z["names"].tolist() == names
    model = ismkernel.load_model(EXAMPLE_MODEL)
    (mc,) = ismkernel.ism(model, x).reduce("mean-centred")
    np.testing.assert_allclose(
        z["scores"], mc[..., 0].transpose(0, 2, 1), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    "args,match",
    [
        (["--format", "npz", "--positions", "0:10"], "needs every position"),
        (["--alternatives", "ACGX"], "'X' is not one of A, C, G, T or N"),
        (["--positions", "10:300"], "out of range for sequences of length 200"),
        (["--output", "nope"], "'nope' is not a model output"),
        (["--tasks", "3"], "out of range for output 'motif_logit'"),
        (["--sum-over", "0:5"], "needs a profile output"),
        (["--memory-budget", "lots"], "takes bytes such as 512M"),
    ],
)
def test_bad_options_are_clear(tmp_path, args, match):
    out = tmp_path / ("o.npz" if "npz" in args else "o.h5")
    proc = run_cli("ism", "--example", "-o", out, *args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert match in proc.stderr


def test_options_shape_the_file(tmp_path):
    out = tmp_path / "o.h5"
    run_cli(
        "ism",
        "--example",
        "-o",
        out,
        "--positions",
        "5:25",
        "--alternatives",
        "GTN",
        "--reduce",
        "l2",
        "-q",
    )
    res = load_results(out)
    assert res["positions"].tolist() == list(range(5, 25))
    assert res["labels"] == ["G", "T", "N"]
    np.testing.assert_array_equal(res["alternatives"][2], np.zeros(4))
    (stored,) = res["outputs"].values()
    assert stored["scores"].shape == (8, 20, 1)
    assert stored["axes"] == "seq,position,task"


def test_wrong_length_fasta_and_center(tmp_path):
    fasta = tmp_path / "short.fa"
    fasta.write_text(">a\n" + "ACGT" * 40 + "\n")
    proc = run_cli("ism", EXAMPLE_MODEL, fasta, "-o", tmp_path / "o.h5", check=False)
    assert "has length 160 but the model takes 200; pass --center" in proc.stderr
    run_cli("ism", EXAMPLE_MODEL, fasta, "-o", tmp_path / "o.h5", "--center", "-q")
    res = load_results(tmp_path / "o.h5")
    np.testing.assert_array_equal(res["onehot"][0, :20], np.zeros((20, 4)))


def test_onnx_model_from_the_command_line(tmp_path):
    from conftest import ONNX_FIXTURES

    fasta = random_fasta(tmp_path / "in.fa", 3, 64)
    out = tmp_path / "o.h5"
    run_cli(
        "ism",
        ONNX_FIXTURES / "bpnet.onnx",
        fasta,
        "-o",
        out,
        "--output",
        "view",
        "-q",
    )
    res = load_results(out)
    model = ismkernel.load_model(ONNX_FIXTURES / "bpnet.onnx")
    x = res["onehot"].transpose(0, 2, 1)
    api = ismkernel.ism(model, x).reduce("delta", outputs="view")[0]
    np.testing.assert_allclose(
        res["outputs"]["view"]["scores"], api, rtol=1e-5, atol=1e-6
    )


def test_sum_over_computes_only_the_summed_rows_and_matches_the_api(tmp_path):
    from conftest import ONNX_FIXTURES

    fasta = random_fasta(tmp_path / "in.fa", 2, 64, seed=1)
    out = tmp_path / "o.h5"
    model_file = ONNX_FIXTURES / "bpnet.onnx"
    run_cli(
        "ism",
        model_file,
        fasta,
        "-o",
        out,
        "--output",
        "slice_1",
        "--tasks",
        "1",
        "--sum-over",
        "10:30",
        "--reduce",
        "delta",
        "-q",
    )
    res = load_results(out)
    model = ismkernel.load_model(model_file)
    x = res["onehot"].transpose(0, 2, 1)
    (want,) = ismkernel.ism(model, x).reduce(
        "delta", outputs="slice_1", tasks=[1], sum_over="10:30"
    )
    got = res["outputs"]["slice_1"]["scores"]
    assert got.shape == want.shape == (2, 64, 4, 1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_plot_task_is_checked_against_the_output():
    from ismkernel.plot import _matrix

    entry = {"scores": np.zeros((5, 4, 3)), "axes": "seq,position,alternative,task"}
    assert _matrix(entry, "y", 2, 4).shape == (5, 4)
    with pytest.raises(
        ismkernel.InputError,
        match=r"--task 3 is out of range for output 'y' with 3 task\(s\) \(0\.\.2\)",
    ):
        _matrix(entry, "y", 3, 4)
    with pytest.raises(ismkernel.InputError, match="plot one with --task"):
        _matrix(entry, "y", None, 4)
    flat = {"scores": np.zeros((5, 4, 1)), "axes": "seq,position,alternative,out0"}
    with pytest.raises(
        ismkernel.InputError, match="--task 0: output 'y' has no task axis"
    ):
        _matrix(flat, "y", 0, 4)
    with pytest.raises(ismkernel.InputError, match="task must be a channel index"):
        ismkernel.plot_ism("x.h5", 0, "x.png", task="1")


def _two_bpnets():
    from conftest import fixture_path

    return [fixture_path("bpnet_mini.k2.h5"), fixture_path("bpnet_mini.k3.keras")]


def test_ensemble_with_a_profile_reducer_from_the_command_line(tmp_path, capsys):
    from ismkernel.cli import main

    a, b = _two_bpnets()
    fasta = random_fasta(tmp_path / "in.fa", 3, 40, seed=2)
    out = tmp_path / "o.h5"
    args = ["ism", "--model", str(a), "--model", str(b), str(fasta), "-o", str(out)]
    opts = ["--output", "profile", "--reduce", "max", "--around", "4", "--tasks", "1"]
    assert main([*args, *opts, "-q"]) == 0, capsys.readouterr().err
    res = load_results(out)
    stored = res["outputs"]["profile"]
    assert stored["axes"] == "seq,position,alternative,task,field"
    assert res["attrs"]["model_file"] == "bpnet_mini.k2.h5,bpnet_mini.k3.keras"
    assert res["attrs"]["around"] == 4
    models = [ismkernel.load_model(p) for p in (a, b)]
    api = ismkernel.ism(models=models, x=res["onehot"])
    (want,) = api.reduce("max", outputs="profile", tasks=[1], around=4)
    assert stored["scores"].shape == want.shape == (3, 40, 4, 1, 2)
    np.testing.assert_allclose(stored["scores"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stored["reference"], api.reference[0], rtol=1e-5)
    # a resumed run must read the same rows
    assert main([*args, *opts[:-4], "--around", "5", "--tasks", "1", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "written with around=4, this run has 5" in err


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--model", "B", "A", "IN"], "give the model as MODEL or with --model"),
        (["--reduce", "delta", "--around", "3"], "over= and around= choose the rows"),
        (["--reduce", "max"], "'counts' has shape \\(2,\\): choose a profile with"),
        (["--reduce", "max", "--sum-over", "0:4"], "sum_over would sum away"),
        (["--model", "BASSET"], "member 2 \\('basset_mini.k2.h5'\\) has inputs of"),
    ],
)
def test_ensemble_and_profile_reducer_errors(tmp_path, capsys, extra, match):
    from conftest import fixture_path

    from ismkernel.cli import main

    a, b = _two_bpnets()
    fasta = random_fasta(tmp_path / "in.fa", 1, 40)
    names = {"A": str(a), "B": str(b), "IN": str(fasta)}
    names["BASSET"] = str(fixture_path("basset_mini.k2.h5"))
    extra = [names.get(e, e) for e in extra]
    head = ["ism", "--model", str(a), "--model", str(b)]
    tail = [] if str(fasta) in extra else [str(fasta)]
    assert main([*head, *extra, *tail, "-o", str(tmp_path / "o.h5"), "-q"]) == 2
    assert re.search(match, capsys.readouterr().err)


def test_ensembles_are_for_ism_and_variants(tmp_path, capsys):
    from ismkernel.cli import main

    a, b = _two_bpnets()
    fasta = random_fasta(tmp_path / "in.fa", 1, 40)
    args = ["scan", "--model", str(a), "--model", str(b), str(fasta)]
    assert main([*args, "--occlude", "3", "-o", str(tmp_path / "o.h5")]) == 2
    err = capsys.readouterr().err
    assert "an ensemble (--model given 2 times) scores ism and variants jobs" in err


def test_a_free_length_keras_model_from_the_command_line(tmp_path, capsys):
    """A Keras Input(shape=(None, 4)) (as SpliceAI's): the job takes the
    length from the sequences, and every output's shape with it."""
    from conftest import fixture_path

    from ismkernel.cli import main

    model_file = fixture_path("free_length.k2.h5")
    fasta = random_fasta(tmp_path / "in.fa", 2, 30, seed=3)
    out = tmp_path / "o.h5"
    assert main(["ism", str(model_file), str(fasta), "-o", str(out), "-q"]) == 0
    res = load_results(out)
    api = ismkernel.ism(ismkernel.load_model(model_file), res["onehot"])
    for name, want in zip(api.output_names, api.reduce("delta")):
        got = res["outputs"][name]["scores"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    profile = api.output_names[1]
    out2 = tmp_path / "max.h5"
    opts = ["--output", profile, "--reduce", "max", "--around", "2"]
    assert main(["ism", str(model_file), str(fasta), "-o", str(out2), *opts]) == 0
    got = load_results(out2)["outputs"][profile]["scores"]
    np.testing.assert_allclose(
        got, api.reduce("max", outputs=profile, around=2)[0], rtol=1e-5, atol=1e-6
    )
