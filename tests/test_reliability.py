"""Nothing lost, nothing mixed: results files under concurrent runs, kill -9
at any instant, changed inputs, full disks and bad arguments.

Every test checks two things: no finished result is lost (an existing file
keeps its bytes, finished rows equal an uninterrupted run's) and the message
is the documented one.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import random_fasta, run_cli

import ismkernel
from ismkernel.cli import main
from ismkernel.errors import InputError, ModelFileError, OutputFileError
from ismkernel.inputs import check_memory_budget
from ismkernel.io.results import ResultsFile, load_results
from ismkernel.job import EXAMPLE_FASTA, EXAMPLE_MODEL, IsmJob, run_job

N_SEQS = 30
COMMON = ["--positions", "0:40", "--seqs-per-batch", "2", "-q"]
LOCKED = "is being written by another ismkernel run (process"
LOCKED_RE = re.escape(LOCKED)


def _start(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "ismkernel", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _listing(directory) -> dict[str, str]:
    return {p.name: _digest(p) for p in sorted(Path(directory).iterdir())}


def _assert_same(a: dict, b: dict, rows=None):
    """Results ``b`` equal ``a`` bit for bit (on ``rows``, default all)."""
    rows = slice(None) if rows is None else rows
    assert a["names"] == b["names"]
    np.testing.assert_array_equal(a["onehot"][rows], b["onehot"][rows])
    for name in a["outputs"]:
        for key in ("scores", "reference"):
            np.testing.assert_array_equal(
                a["outputs"][name][key][rows], b["outputs"][name][key][rows]
            )


def _assert_valid_prefix(path, expected):
    """``path`` opens, and every row it marks done is the uninterrupted run's."""
    res = load_results(path)
    _assert_same(expected, res, rows=res["done"])
    return res


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The input and an uninterrupted run of it from the command line (the
    reference every interrupted run is compared with), with its duration."""
    d = tmp_path_factory.mktemp("reliability")
    fasta = random_fasta(d / "in.fa", N_SEQS, 200, seed=7)
    start = time.perf_counter()
    run_cli("ism", EXAMPLE_MODEL, fasta, "-o", d / "whole.h5", *COMMON)
    seconds = time.perf_counter() - start
    return {
        "dir": d,
        "fasta": fasta,
        "whole": d / "whole.h5",
        "expected": load_results(d / "whole.h5"),
        "seconds": seconds,
    }


# -- kill -9 at any instant -------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_at_random_instants_then_resume(tmp_path, work, seed):
    """However early or late a run is killed, the output is absent or valid
    with its finished rows exact, and --resume ends with the whole result."""
    rng = np.random.default_rng(seed)
    # The first milliseconds (before and while the file appears) and any
    # instant of the run.
    delays = [rng.uniform(0, 0.05), rng.uniform(0, 1.2 * work["seconds"])]
    for k, delay in enumerate(delays):
        out = tmp_path / f"cut{k}.h5"
        proc = _start("ism", EXAMPLE_MODEL, work["fasta"], "-o", out, *COMMON)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        if out.exists():
            _assert_valid_prefix(out, work["expected"])
        proc = run_cli(
            "ism", EXAMPLE_MODEL, work["fasta"], "-o", out, *COMMON, "--resume"
        )
        _assert_same(work["expected"], load_results(out))
        assert not Path(f"{out}.tmp").exists()
        assert not Path(f"{out}.lock").exists()


def test_kill_9_during_force_keeps_the_old_result(tmp_path, work):
    """An interrupted --force run leaves the old file byte for byte; its
    partial file is valid, and --resume finishes it and replaces the old."""
    old = tmp_path / "old.h5"
    run_cli("ism", EXAMPLE_MODEL, work["fasta"], "-o", old, *COMMON, "--reduce", "raw")
    before = _digest(old)
    rng = np.random.default_rng(11)
    for delay in (0.01, rng.uniform(0.3, 1.0) * work["seconds"]):
        out = tmp_path / "out.h5"
        shutil.copy(old, out)
        proc = _start(
            "ism", EXAMPLE_MODEL, work["fasta"], "-o", out, *COMMON, "--force"
        )
        time.sleep(delay)
        proc.kill()
        proc.wait()
        partial = Path(f"{out}.partial")
        if proc.returncode == 0:  # it finished first: the new result, whole
            _assert_same(work["expected"], load_results(out))
            continue
        assert _digest(out) == before, "the old result was touched"
        if partial.exists():
            _assert_valid_prefix(partial, work["expected"])
            proc = run_cli(
                "ism", EXAMPLE_MODEL, work["fasta"], "-o", out, *COMMON[:4], "--resume"
            )
            assert f"(continued '{partial}')" in proc.stderr
        else:  # killed before it wrote anything: start over
            run_cli("ism", EXAMPLE_MODEL, work["fasta"], "-o", out, *COMMON, "--force")
        assert not partial.exists()
        _assert_same(work["expected"], load_results(out))


def test_ctrl_c_during_force_says_where_the_partial_file_is(tmp_path, work):
    out = tmp_path / "out.h5"
    shutil.copy(work["whole"], out)
    before = _digest(out)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ismkernel",
            *map(str, ["ism", EXAMPLE_MODEL, work["fasta"], "-o", out, "--force"]),
            *COMMON[:2],
            *["--seqs-per-batch", "1", "--backend", "reference"],
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    partial = Path(f"{out}.partial")
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if partial.exists():
            with h5py.File(partial, "r", locking=False) as f:
                if f["done"][:].sum() >= 2:
                    proc.send_signal(signal.SIGINT)
                    break
        time.sleep(0.005)
    _, err = proc.communicate()
    assert proc.returncode == 130, err
    assert f"'{out}' is untouched; the " in err
    assert f"finished so far are in '{partial}': rerun with --resume" in err
    assert _digest(out) == before


# -- concurrent writers ----------------------------------------------------------


def test_a_second_run_cannot_touch_a_file_being_written(tmp_path, work):
    out = tmp_path / "busy.h5"
    args = ["--seqs-per-batch", "1", "-q", "--backend", "reference", *COMMON[:2]]
    first = _start("ism", EXAMPLE_MODEL, work["fasta"], "-o", out, *args)
    deadline = time.time() + 60
    while time.time() < deadline and first.poll() is None:
        if out.exists():
            with h5py.File(out, "r", locking=False) as f:
                if f["done"][:].sum() >= 1:
                    break
        time.sleep(0.002)
    # Held still mid-run (it keeps its lock), so the test does not depend on
    # how fast this machine finishes the run.
    first.send_signal(signal.SIGSTOP)
    try:
        assert first.poll() is None, "the first run ended before the second began"
        size, before = out.stat().st_size, _digest(out)
        for extra in (["--force"], ["--resume"]):
            proc = run_cli("ism", EXAMPLE_MODEL, work["fasta"], "-o", out, *args, *extra,
                           check=False)  # fmt: skip
            assert proc.returncode == 2
            assert f"{LOCKED} {first.pid} on " in proc.stderr, proc.stderr
            assert out.stat().st_size == size and _digest(out) == before
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate()
    assert first.returncode == 0, err
    res = load_results(out)
    assert res["done"].all()
    np.testing.assert_allclose(  # another backend: equal up to rounding
        res["outputs"]["motif_logit"]["scores"],
        work["expected"]["outputs"]["motif_logit"]["scores"],
        rtol=1e-5,
        atol=1e-5,
    )


def test_two_force_runs_started_at_once(tmp_path, work):
    """Both overwrite one complete file: one runs, the other is refused (or
    runs after it); the file is never mixed or corrupt."""
    out = tmp_path / "both.h5"
    for _ in range(2):
        shutil.copy(work["whole"], out)
        procs = [
            _start("ism", EXAMPLE_MODEL, work["fasta"], "-o", out, *COMMON, "--force")
            for _ in range(2)
        ]
        results = [(p.wait(), p.stderr.read()) for p in procs]
        for p in procs:
            p.stderr.close()
        assert any(rc == 0 for rc, _ in results), results
        for rc, err in results:
            assert rc == 0 or (rc == 2 and LOCKED in err), err
        _assert_same(work["expected"], load_results(out))
        assert not Path(f"{out}.partial").exists()


def test_the_lock_names_the_holder_and_a_stale_lock_is_taken_over(tmp_path):
    from ismkernel.io.output import OutputLock

    out = str(tmp_path / "x.h5")
    with OutputLock(out):
        holder = Path(out + ".lock").read_text().split()[0]
        assert holder == str(os.getpid())
        with pytest.raises(OutputFileError, match=f"{LOCKED_RE} {os.getpid()} on "):
            OutputLock(out).acquire()
    assert not Path(out + ".lock").exists()
    Path(out + ".lock").write_text("99999999 elsewhere\n")  # left by kill -9
    with OutputLock(out):
        pass


# -- resume checks content -----------------------------------------------------


def _interrupt_after(monkeypatch, n_batches, exc):
    """Make ResultsFile.write raise ``exc`` once ``n_batches`` are written."""
    original = ResultsFile.write
    count = {"n": 0}

    def write(self, *args):
        if count["n"] == n_batches:
            raise exc
        count["n"] += 1
        return original(self, *args)

    monkeypatch.setattr(ResultsFile, "write", write)


def _edit_fasta(src, dst, record: int):
    """``src`` with one base of record ``record`` changed, names kept."""
    lines = Path(src).read_text().splitlines()
    seq = lines[2 * record + 1]
    lines[2 * record + 1] = ("C" if seq[10] != "C" else "G").join((seq[:10], seq[11:]))
    Path(dst).write_text("\n".join(lines) + "\n")
    return dst


def test_resume_with_changed_content_is_refused_naming_the_sequence(
    tmp_path, work, monkeypatch
):
    fasta = work["fasta"]
    out = tmp_path / "o.h5"
    job = dict(positions="0:40", seqs_per_batch=2, quiet=True)
    _interrupt_after(monkeypatch, 3, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        run_job(IsmJob(EXAMPLE_MODEL, str(fasta), str(out), **job))
    monkeypatch.undo()
    before = _digest(out)
    # A finished row (s1) and an unfinished one (s20) changed, same names.
    for record in (1, 20):
        changed = _edit_fasta(fasta, tmp_path / f"changed{record}.fa", record)
        with pytest.raises(
            InputError,
            match=rf"cannot resume '.*o\.h5': sequence 's{record}' \(number "
            rf"{record + 1}\) differs from the one this file was started with",
        ):
            run_job(IsmJob(EXAMPLE_MODEL, str(changed), str(out), resume=True, **job))
        assert _digest(out) == before
    # Other names, or another order.
    renamed = tmp_path / "renamed.fa"
    renamed.write_text(Path(fasta).read_text().replace(">s4\n", ">t4\n"))
    with pytest.raises(
        InputError, match="sequence 5 is 't4' in the input but 's4' in the file"
    ):
        run_job(IsmJob(EXAMPLE_MODEL, str(renamed), str(out), resume=True, **job))
    # The same content under another file name resumes.
    copy = shutil.copy(fasta, tmp_path / "copy.fa")
    run_job(IsmJob(EXAMPLE_MODEL, str(copy), str(out), resume=True, **job))
    ref = tmp_path / "ref.h5"
    run_job(IsmJob(EXAMPLE_MODEL, str(fasta), str(ref), **job))
    _assert_same(load_results(ref), load_results(out))


def test_an_input_changing_during_the_run_is_caught(tmp_path, work, monkeypatch):
    import ismkernel.job as job_module

    fasta = shutil.copy(work["fasta"], tmp_path / "in.fa")
    out = tmp_path / "o.h5"
    original = job_module.onehot_digest
    calls = {"n": 0}

    def digest(x):  # the digest pass sees other bases in s3
        calls["n"] += 1
        return original(x + (calls["n"] == 4))

    monkeypatch.setattr(job_module, "onehot_digest", digest)
    with pytest.raises(
        InputError,
        match=r"sequence 's3' \(number 4\) read now differs from the same sequence "
        r"read when the run started: the input changed during the run\. '.*o\.h5' "
        r"keeps the 2 sequences finished before",
    ):
        run_job(
            IsmJob(EXAMPLE_MODEL, str(fasta), str(out), seqs_per_batch=2, quiet=True)
        )


def test_resume_of_an_unreadable_file_suggests_force(tmp_path):
    out = tmp_path / "o.h5"
    out.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # a file cut short
    proc = main(["ism", "--example", "-o", str(out), "--resume", "-q"])
    assert proc == 2
    with pytest.raises(
        InputError,
        match=r"cannot resume '.*o\.h5': it is not a readable HDF5 file .*; rerun "
        "with --force to start it over",
    ):
        run_job(IsmJob(EXAMPLE_MODEL, EXAMPLE_FASTA, str(out), resume=True, quiet=True))
    other = tmp_path / "v.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "ismkernel-variants"
    with pytest.raises(InputError, match="not an ismkernel ISM results file"):
        run_job(
            IsmJob(EXAMPLE_MODEL, EXAMPLE_FASTA, str(other), resume=True, quiet=True)
        )
    run_job(IsmJob(EXAMPLE_MODEL, EXAMPLE_FASTA, str(out), force=True, quiet=True))
    assert load_results(out)["done"].all()


def test_resume_refuses_a_conflicting_backend(tmp_path, capsys):
    out = tmp_path / "o.h5"
    args = ["ism", "--example", "-o", str(out), "--positions", "0:10", "-q"]
    assert main([*args, "--backend", "reference"]) == 0
    assert main([*args, "--resume", "--backend", "cpu"]) == 2
    assert (
        "it was written with --backend reference, this run asks for --backend cpu; "
        "a resumed run computes as the first one did, so drop --backend"
    ) in capsys.readouterr().err
    assert main([*args, "--resume", "--backend", "reference"]) == 0
    assert main([*args, "--resume"]) == 0
    assert main([*args, "--resume", "--force"]) == 2
    assert "--resume and --force exclude each other" in capsys.readouterr().err


# -- full disk ---------------------------------------------------------------------


def test_full_disk_stops_cleanly_and_resumes(tmp_path, work, monkeypatch):
    """Simulated: the disk fills while the third batch is written."""
    fasta = work["fasta"]
    job = dict(positions="0:40", seqs_per_batch=2, quiet=True)
    ref = tmp_path / "ref.h5"
    run_job(IsmJob(EXAMPLE_MODEL, str(fasta), str(ref), **job))
    out = tmp_path / "o.h5"
    full = OSError(errno.ENOSPC, "No space left on device")
    _interrupt_after(monkeypatch, 2, full)
    with pytest.raises(
        OutputFileError,
        match=r"^no space left on device; 4 sequences are finished in '.*o\.h5'; "
        "free space and --resume$",
    ):
        run_job(IsmJob(EXAMPLE_MODEL, str(fasta), str(out), **job))
    assert load_results(out)["done"].sum() == 4
    # The same under --force: the old file stays, the partial one is named.
    monkeypatch.undo()
    _interrupt_after(monkeypatch, 2, full)
    old = _digest(ref)
    with pytest.raises(
        OutputFileError,
        match=r"^no space left on device; 4 sequences are finished in "
        r"'.*ref\.h5\.partial' \('.*ref\.h5' is untouched\); free space and "
        "--resume$",
    ):
        run_job(IsmJob(EXAMPLE_MODEL, str(fasta), str(ref), force=True, **job))
    assert _digest(ref) == old
    monkeypatch.undo()
    run_job(IsmJob(EXAMPLE_MODEL, str(fasta), str(out), resume=True, **job))
    _assert_same(load_results(ref), load_results(out))
    # HDF5 reports a full disk in its own words, not as an errno.
    _interrupt_after(
        monkeypatch,
        0,
        OSError("Can't write data (file write failed: errno = 28, error message = "
                "'No space left on device')"),
    )  # fmt: skip
    with pytest.raises(OutputFileError, match="^no space left on device; 0 seq"):
        run_job(IsmJob(EXAMPLE_MODEL, str(fasta), str(tmp_path / "p.h5"), **job))


def test_too_little_free_space_is_refused_up_front(tmp_path, work, monkeypatch):
    import ismkernel.io.output as output

    monkeypatch.setattr(output, "free_bytes", lambda d: 50_000)
    out = tmp_path / "o.h5"
    shutil.copy(work["whole"], out)
    before = _listing(tmp_path)
    for name, extra in (("new.h5", {}), ("o.h5", {"force": True})):
        with pytest.raises(
            OutputFileError,
            match=r"'.*(new|o)\.h5(\.partial)?' needs about 1\.\d MiB for 30 sequence\(s\)"
            r".* but the file system of '.*' has 48\.8 KiB free; free space or "
            "write elsewhere",
        ):
            run_job(
                IsmJob(
                    EXAMPLE_MODEL,
                    str(work["fasta"]),
                    str(tmp_path / name),
                    quiet=True,
                    **extra,
                )
            )
        assert _listing(tmp_path) == before
    with pytest.raises(OutputFileError, match=r"o\.npz' needs about"):
        run_job(
            IsmJob(EXAMPLE_MODEL, EXAMPLE_FASTA, str(tmp_path / "o.npz"), quiet=True)
        )


_TMPFS_DRIVER = """
import os, subprocess, sys, time, h5py
d, model, small, big, report = sys.argv[1:6]
def ism(name, *args):
    err = open(f"{report}.{name}", "w+")
    return subprocess.Popen([sys.executable, "-m", "ismkernel", "ism", model, *args],
                            stderr=err, text=True), err
def finish(p, err):
    rc = p.wait()
    err.seek(0)
    return [str(rc), err.read().strip()]
lines = []
lines += finish(*ism("big", big, "-o", f"{d}/big.h5", "-q"))
lines.append(" ".join(sorted(os.listdir(d))))
out = f"{d}/o.h5"
p, err = ism("small", small, "-o", out, "--backend", "reference",
             "--seqs-per-batch", "1", "--positions", "0:40", "-q")
while p.poll() is None:
    try:
        with h5py.File(out, "r", locking=False) as f:
            if f["done"][:].sum() >= 1:
                break
    except (OSError, KeyError):
        pass
    time.sleep(0.002)
try:  # the disk fills while the run goes on
    with open(f"{d}/filler", "wb", buffering=0) as f:
        while True:
            f.write(b"x" * 65536)
except OSError:
    pass
lines += finish(p, err)
os.remove(f"{d}/filler")
lines += finish(*ism("resume", small, "-o", out, "--resume", "--positions", "0:40"))
subprocess.run(["cp", out, report + ".h5"], check=True)
open(report, "w").write("\\n".join(lines) + "\\n")
"""


def test_full_tmpfs(tmp_path):
    """A real full disk: a 3 MiB tmpfs in a user and mount namespace."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare to mount a tmpfs")
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
         f"mount -t tmpfs -o size=1m tmpfs {tmp_path}"],
        capture_output=True,
    )  # fmt: skip
    if probe.returncode != 0:
        pytest.skip("this system does not let a test mount a tmpfs")
    small = random_fasta(tmp_path / "small.fa", 30, 200, seed=3)
    big = random_fasta(tmp_path / "big.fa", 600, 200, seed=4)
    disk = tmp_path / "disk"
    disk.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(_TMPFS_DRIVER)
    report = tmp_path / "report.txt"
    script = (
        f"mount -t tmpfs -o size=3m tmpfs {disk} && exec {sys.executable} {driver} "
        f"{disk} {EXAMPLE_MODEL} {small} {big} {report}"
    )
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    lines = report.read_text().splitlines()
    rc, err, listing = lines[0], lines[1], lines[2] if len(lines) > 2 else ""
    assert rc == "2" and "big.h5' needs about" in err and "MiB free" in err, lines
    assert listing == "", lines  # nothing left behind
    assert lines[3] == "2", lines
    assert lines[4].startswith("ismkernel: error: OutputFileError: no space left on ")
    assert "sequences are finished in" in lines[4]
    assert lines[4].endswith("o.h5'; free space and --resume"), lines
    assert lines[5] == "0", lines
    ref = tmp_path / "ref.h5"
    assert "already in the file" in lines[6], lines
    run_cli("ism", EXAMPLE_MODEL, small, "-o", ref, "--backend", "reference",
            "--seqs-per-batch", "1", "--positions", "0:40", "-q")  # fmt: skip
    _assert_same(load_results(ref), load_results(str(report) + ".h5"))


# -- everything is checked before anything is written --------------------------


def _nan_model(tmp_path):
    path = tmp_path / "nan.h5"
    shutil.copy(EXAMPLE_MODEL, path)
    with h5py.File(path, "r+") as f:
        d = f["model_weights/conv2/conv2/kernel:0"]
        w = d[()]
        w[1, 2, 3] = np.inf
        d[...] = w
    return path


BAD_ISM = [
    (["--threads", "0"], "--threads must be a positive integer, got 0"),
    (["--workers", "0"], "--workers must be a positive integer, got 0"),
    (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    (["--seqs-per-batch", "-2"], "--seqs-per-batch must be a positive integer"),
    (["--memory-budget", "lots"], "--memory-budget takes bytes such as 512M or 2G"),
    (["--memory-budget", "0"], "--memory-budget must be positive, got '0'"),
    (["--scheduler", "nowhere"], "--scheduler takes an address such as tcp://HOST"),
    (["--scheduler", "a:1", "--workers", "2"], "either --scheduler or --workers"),
    (["--reduce", "log2fc"], "log2fc needs positive outputs, but output"),
    (["--positions", "10:300"], "out of range for sequences of length 200"),
    (["--positions", "x"], "--positions must be START:END"),
    (["--alternatives", "ACGX"], "'X' is not one of A, C, G, T or N"),
    (["--output", "nope"], "'nope' is not a model output"),
    (["--tasks", "3"], "out of range for output 'motif_logit'"),
    (["--sum-over", "0:5"], "needs a profile output"),
    (["--format", "npz"], "does not end in .npz but --format npz writes an .npz"),
    (["--resume"], "--resume and --force exclude each other"),
]


@pytest.mark.parametrize("args,match", BAD_ISM)
def test_bad_options_leave_every_file_as_it_was(tmp_path, work, args, match, capsys):
    """With --force over a complete result: refused, and nothing changes."""
    out = tmp_path / "o.h5"
    shutil.copy(work["whole"], out)
    before = _listing(tmp_path)
    argv = ["ism", EXAMPLE_MODEL, str(work["fasta"]), "-o", str(out), "--force", "-q"]
    assert main(argv + args) == 2
    err = capsys.readouterr().err
    assert match in err, err
    assert len(err.strip().splitlines()) == 1
    assert _listing(tmp_path) == before


def test_bad_inputs_leave_every_file_as_it_was(tmp_path, work, capsys):
    out = tmp_path / "o.h5"
    shutil.copy(work["whole"], out)
    bad_fa = tmp_path / "bad.fa"
    bad_fa.write_text(">a\nAC-T\n")
    short = random_fasta(tmp_path / "short.fa", 2, 150)
    cases = [
        ([EXAMPLE_MODEL, tmp_path / "none.fa"], "does not exist"),
        ([EXAMPLE_MODEL, bad_fa], "invalid character '-'"),
        ([EXAMPLE_MODEL, short], "has length 150 but the model takes 200"),
        ([tmp_path / "none.h5", work["fasta"]], "model file"),
        ([_nan_model(tmp_path), work["fasta"]], "variable 'kernel' holds 1 non-finite"),
    ]
    before = _listing(tmp_path)
    for files, match in cases:
        argv = ["ism", *map(str, files), "-o", str(out), "--force", "-q"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert match in err, err
        assert _listing(tmp_path) == before


def test_a_scheduler_that_does_not_answer_is_refused_before_any_file(
    tmp_path, work, monkeypatch
):
    import contextlib

    import ismkernel.job as job_module

    @contextlib.contextmanager
    def unreachable(*args, **kwargs):
        raise InputError("cannot reach the Dask scheduler at tcp://10.0.0.1:8786")
        yield

    monkeypatch.setattr(job_module, "cluster_client", unreachable)
    out = tmp_path / "o.h5"
    shutil.copy(work["whole"], out)
    before = _listing(tmp_path)
    for o, force in ((out, True), (tmp_path / "new.h5", False), (out, False)):
        job = IsmJob(
            EXAMPLE_MODEL, str(work["fasta"]), str(o), quiet=True, positions="0:40"
        )
        job.seqs_per_batch = 2
        job.force, job.resume = force, not force and o == out
        job.scheduler = "tcp://10.0.0.1:8786"
        with pytest.raises(InputError, match="cannot reach the Dask scheduler"):
            run_job(job)
        assert _listing(tmp_path) == before


@pytest.mark.parametrize(
    "argv,match",
    [
        (["ism", "--example", "-o", "{d}/nodir/x.h5"], "directory '{d}/nodir' does not"),
        (["ism", "--example", "-o", "{d}"], "is a directory; give a file name"),
        (["ism", "--example", "-o", "{d}/x.txt"], "results files end in .h5 or .hdf5"),
        (["ism", "--example", "-o", "{d}/x.npz", "--format", "hdf5"], "ends in .npz"),
        (["ism", "--example", "-o", "/proc/x.h5"], "cannot create files in directory"),
        (["ism", "--example", "-o", "/dev/null"], "not a regular file"),
        (["ism", "--example", "-o", "{d}/nodir/x.npz"], "does not exist"),
        (["plot", "{d}/o.h5", "--seq", "0", "-o", "{d}/nodir/p.png"], "does not exist"),
        (["plot", "{d}/o.h5", "--seq", "0", "-o", "{d}/p.gif"], "must end in one of"),
        (["plot", "{d}/o.h5", "--seq", "0", "-o", "{d}/p.png", "--task", "3"],
         "--task 3 is out of range for output 'motif_logit' with 1 task(s) (0..0)"),
        (["plot", "{d}/none.h5", "--seq", "0", "-o", "{d}/p.png"], "does not exist"),
        (["plot", "{d}/in.fa", "--seq", "0", "-o", "{d}/p.png"], "not a readable HDF5"),
        (["demo", "--out-dir", "/proc"], "cannot create files in directory '/proc'"),
        (["demo", "--out-dir", "{d}/in.fa"], "--out-dir '{d}/in.fa' is not a directory"),
        (["variants", EXAMPLE_MODEL, "--vcf", "{d}/v.vcf", "--genome", "{d}/g.fa",
          "-o", "{d}/nodir/v.tsv"], "directory '{d}/nodir' does not exist"),
        (["variants", EXAMPLE_MODEL, "--vcf", "{d}/v.vcf", "--genome", "{d}/g.fa",
          "-o", "{d}/v.bed"], "must end in one of .tsv"),
        (["variants", EXAMPLE_MODEL, "--vcf", "{d}/v.vcf", "--genome", "{d}/g.fa",
          "-o", "{d}/v.tsv", "--threads", "0"], "--threads must be a positive"),
        (["variants", EXAMPLE_MODEL, "--vcf", "{d}/v.vcf", "--genome", "{d}/g.fa",
          "-o", "{d}/v.tsv", "--memory-budget", "1X"], "takes bytes such as 512M"),
    ],
)  # fmt: skip
def test_output_paths_are_checked_before_any_work(tmp_path, argv, match, capsys):
    d = str(tmp_path)
    (tmp_path / "in.fa").write_text(">a\nACGT\n")
    (tmp_path / "v.vcf").write_text("#CHROM\tPOS\tID\tREF\tALT\nchr1\t100\t.\tA\tC\n")
    (tmp_path / "g.fa").write_text(">chr1\n" + "A" * 300 + "\n")
    if argv[0] == "plot":
        pytest.importorskip("matplotlib")
        run_job(IsmJob(EXAMPLE_MODEL, EXAMPLE_FASTA, f"{d}/o.h5", quiet=True,
                       positions="0:5"))  # fmt: skip
    before = _listing(tmp_path)
    assert main([a.format(d=d) for a in argv]) == 2
    err = capsys.readouterr().err
    assert match.format(d=d) in err, err
    assert len(err.strip().splitlines()) == 1
    assert _listing(tmp_path) == before


# -- the other items -------------------------------------------------------------


def test_header_only_vcf_writes_an_empty_result_with_a_note(tmp_path, capsys):
    pytest.importorskip("pyfaidx")
    vcf = tmp_path / "h.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\n")
    (tmp_path / "g.fa").write_text(">chr1\n" + "A" * 300 + "\n")
    for name in ("v.tsv", "v.h5"):
        argv = ["variants", EXAMPLE_MODEL, "--vcf", str(vcf), "--genome"]
        argv += [str(tmp_path / "g.fa"), "-o", str(tmp_path / name)]
        assert main(argv) == 0
        assert (
            f"note: '{vcf}' holds no variant records (a header only); wrote an "
            "empty result" in capsys.readouterr().err
        )
    lines = (tmp_path / "v.tsv").read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chrom\tpos\tid\tref\talt")
    with h5py.File(tmp_path / "v.h5") as f:
        assert f["chrom"].shape == (0,)


def _stale_genome(tmp_path):
    """A genome whose .fai is newer than the FASTA but was made for another."""
    pytest.importorskip("pyfaidx")
    from ismkernel.io.genome import Genome

    genome = Path(__file__).parent / "fixtures" / "genome" / "genome.fa"
    fa = str(shutil.copy(genome, tmp_path / "g.fa"))
    Genome(fa)  # writes g.fa.fai
    lines = Path(fa).read_text().splitlines()
    Path(fa).write_text("\n".join(lines[:3] + lines[6:]) + "\n")
    stamp = os.stat(fa).st_mtime + 10
    os.utime(f"{fa}.fai", (stamp, stamp))
    return fa


def test_stale_fai_is_refused_for_bed_ism_and_variants(tmp_path, capsys):
    fa = _stale_genome(tmp_path)
    bed = tmp_path / "r.bed"
    bed.write_text("chr1\t250\t350\tap1\n")
    vcf = tmp_path / "v.vcf"
    vcf.write_text("#CHROM\tPOS\tID\tREF\tALT\nchr1\t301\t.\tT\tG\n")
    before = _listing(tmp_path)
    message = (
        f"genome index '{fa}.fai' does not match '{fa}': record 'chr1' is not where "
        f"the index says (the FASTA changed after it was indexed?). Delete '{fa}.fai' "
        "and rerun; it is rebuilt"
    )
    out = str(tmp_path / "o.h5")
    assert (
        main(["ism", EXAMPLE_MODEL, "--bed", str(bed), "--genome", fa, "-o", out]) == 2
    )
    assert message in capsys.readouterr().err
    argv = ["variants", EXAMPLE_MODEL, "--vcf", str(vcf), "--genome", fa]
    assert main([*argv, "-o", str(tmp_path / "v.tsv")]) == 2
    assert message in capsys.readouterr().err
    assert _listing(tmp_path) == before
    os.remove(f"{fa}.fai")
    assert main(["ism", EXAMPLE_MODEL, "--bed", str(bed), "--genome", fa, "-o", out,
                 "-q", "--positions", "0:4"]) == 0  # fmt: skip


def test_nonfinite_weights_are_refused_naming_layer_and_variable(tmp_path):
    path = _nan_model(tmp_path)
    with pytest.raises(
        ModelFileError,
        match=r"layer 'conv2' \(Conv1D\), variable 'kernel' holds 1 non-finite "
        r"value\(s\) \(inf first, at index \(1, 2, 3\)\); every prediction through "
        r"it would be NaN\. .*load_model\(\.\.\., allow_nonfinite=True\) loads it",
    ):
        ismkernel.load_model(path)
    model = ismkernel.load_model(path, allow_nonfinite=True)
    with np.errstate(invalid="ignore"):
        (pred,) = model.predict(np.eye(4, dtype=np.float32)[[[0] * 200]])
    assert not np.isfinite(pred).all()
    with pytest.raises(InputError, match="allow_nonfinite must be True or False"):
        ismkernel.load_model(path, allow_nonfinite="yes")


def test_format_and_suffix_agree(tmp_path, capsys):
    assert (
        main(["ism", "--example", "-o", str(tmp_path / "x.h5"), "--format", "npz"]) == 2
    )
    assert "does not end in .npz but --format npz" in capsys.readouterr().err
    assert (
        main(["ism", "--example", "-o", str(tmp_path / "x.npz"), "--format", "hdf5"])
        == 2
    )
    assert "ends in .npz but --format hdf5 writes HDF5" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    # Without --format, the suffix chooses.
    out = tmp_path / "x.npz"
    assert (
        main(["ism", "--example", "-o", str(out), "--reduce", "mean-centred", "-q"])
        == 0
    )
    assert np.load(out)["scores"].shape == (8, 4, 200)
    assert main(["ism", "--example", "-o", str(out), "-q"]) == 2
    assert "exists; pass --force to overwrite it" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npz"]  # fmt: skip


def test_api_takes_what_the_command_line_takes():
    assert check_memory_budget("1G", "memory_budget") == 2**30
    assert check_memory_budget("512M") == 512 * 2**20
    assert check_memory_budget("1.5GiB") == 3 * 2**29
    assert check_memory_budget(1000) == 1000
    for bad in ("lots", "-1G", "", True, 1.5, "nan"):
        with pytest.raises(InputError, match="memory_budget"):
            check_memory_budget(bad)
    model = ismkernel.load_model(EXAMPLE_MODEL)
    x = np.eye(4, dtype=np.float32)[np.random.default_rng(0).integers(0, 4, (1, 200))]
    for positions in (slice(150, 400), slice(-5, None), slice(250, None)):
        with pytest.raises(
            InputError,
            match=r"positions=slice\(.*\) is out of range for sequence length 200 "
            r"\(valid positions 0\.\.199; a slice's stop may be at most 200\)",
        ):
            ismkernel.ism(model, x, positions=positions)
    with pytest.raises(InputError, match="its step must be a positive integer"):
        ismkernel.ism(model, x, positions=slice(0, 10, 0))
    with pytest.raises(InputError, match="its start must be an integer or None"):
        ismkernel.ism(model, x, positions=slice(1.5, 10))
    res = ismkernel.ism(model, x, positions=slice(190, 200), memory_budget="1G")
    assert res.positions.tolist() == list(range(190, 200))
    with pytest.raises(
        InputError,
        match=r"load_model takes the path of a model file \(str or os\.PathLike\), "
        "got int 123",
    ):
        ismkernel.load_model(123)


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    fasta = tmp_path / "bom.fa"
    fasta.write_bytes(b"\xef\xbb\xbf" + Path(EXAMPLE_FASTA).read_bytes())
    out = tmp_path / "o.h5"
    run_job(IsmJob(EXAMPLE_MODEL, str(fasta), str(out), quiet=True, positions="0:3"))
    assert (
        load_results(out)["names"][0] == Path(EXAMPLE_FASTA).read_text()[1:].split()[0]
    )


def test_failed_run_after_layout_leaves_no_empty_file(tmp_path, monkeypatch):
    """A file this run made that holds no finished sequence is removed when
    the run fails, so the corrected command is not told it exists."""
    _interrupt_after(monkeypatch, 0, InputError("refused"))
    out = tmp_path / "o.h5"
    with pytest.raises(InputError, match="refused"):
        run_job(IsmJob(EXAMPLE_MODEL, EXAMPLE_FASTA, str(out), quiet=True))
    assert list(tmp_path.iterdir()) == []


def test_readme_describes_the_file_as_it_is():
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert "allocated in full" not in readme
    assert "sparse" in readme
    assert (
        "no space left on device; N sequences are finished in OUT; free space and "
        "--resume" in readme
    )
    assert "(examples/" in readme


# -- every other message of the output rules --------------------------------------


def test_output_path_messages(tmp_path):
    from ismkernel.io.output import OutputLock, check_output_path

    with pytest.raises(OutputFileError, match="-o must be a file path, got 123"):
        check_output_path(123)
    with pytest.raises(OutputFileError, match="-o is empty; give a file name"):
        check_output_path(" ")
    (tmp_path / "f.txt").write_text("")
    with pytest.raises(
        OutputFileError, match=r"-o '.*f\.txt/x\.h5': '.*f\.txt' is not a directory"
    ):
        check_output_path(str(tmp_path / "f.txt" / "x.h5"))
    with pytest.raises(OutputFileError, match="must end in .npz$"):
        check_output_path(str(tmp_path / "x.h5"), suffixes=(".npz",))
    with pytest.raises(
        OutputFileError,
        match=r"cannot create the lock file '/proc/x\.h5\.lock' beside '/proc/x\.h5'",
    ):
        OutputLock("/proc/x.h5").acquire()


def _job(out, **kw) -> IsmJob:
    return IsmJob(EXAMPLE_MODEL, EXAMPLE_FASTA, str(out), quiet=True, **kw)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"out": None}, "give the results file with -o OUT"),
        ({"format": "csv"}, "--format must be hdf5 or npz, got 'csv'"),
        ({"resume": True, "format": "npz"}, "--resume works with HDF5 output only"),
        ({"scheduler": "udp://h:1"}, "unknown protocol 'udp'"),
        ({"scheduler": "tcp://h:99999"}, "--scheduler takes an address such as"),
        ({"n_as": "half"}, "--n-as must be one of"),
        ({"input": None}, "give an INPUT sequence file, or --bed with --genome"),
        ({"bed": "r.bed"}, "--bed needs --genome and no INPUT file"),
        ({"backend": "tpu"}, "backend 'tpu' is unknown"),
        ({"dtype": "float16"}, "dtype='float16' is not supported"),
    ],
)
def test_job_option_messages(tmp_path, kw, match):
    out = kw.pop("out", tmp_path / ("o.npz" if kw.get("format") == "npz" else "o.h5"))
    job = _job(out)
    job.out = out if out is None else str(out)
    for key, value in kw.items():
        setattr(job, key, value)
    with pytest.raises(ismkernel.IsmkernelError, match=match):
        run_job(job)
    assert list(tmp_path.iterdir()) == []


def test_partial_file_messages(tmp_path):
    out = tmp_path / "o.h5"
    partial = Path(f"{out}.partial")
    run_job(_job(tmp_path / "p.h5", positions="0:4"))
    os.replace(tmp_path / "p.h5", partial)  # stands for an interrupted --force
    with pytest.raises(
        InputError,
        match=r"'.*o\.h5\.partial' holds an interrupted --force run for '.*o\.h5'; "
        "pass --resume to continue it, or --force to start over",
    ):
        run_job(_job(out, positions="0:4"))
    shutil.copy(partial, out)
    with pytest.raises(
        InputError,
        match=r"'.*o\.h5' exists, and '.*o\.h5\.partial' holds an interrupted "
        r"--force run for it; pass --resume to continue that run \(it then "
        r"replaces '.*o\.h5'\), or --force to start over",
    ):
        run_job(_job(out, positions="0:4"))
    os.remove(out)
    run_job(_job(out, positions="0:4", force=True))  # starts over, drops the partial
    assert out.exists() and not partial.exists()


def test_resume_messages(tmp_path):
    out = tmp_path / "o.h5"
    run_job(_job(out, positions="0:4"))
    with h5py.File(out, "r+") as f:
        f.attrs["backend"] = "tpu"
    with pytest.raises(
        InputError,
        match=r"written with --backend tpu, which this installation does not have",
    ):
        run_job(_job(out, positions="0:4", resume=True))
    with h5py.File(out, "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(InputError, match=r"written by a newer ismkernel \(file format"):
        run_job(_job(out, positions="0:4", resume=True))
    with h5py.File(out, "r+") as f:
        f.attrs["format_version"] = 2
        f.attrs["backend"] = "auto"
    with pytest.raises(InputError, match="it was written with other positions"):
        run_job(_job(out, positions="0:5", resume=True))
    fewer = random_fasta(tmp_path / "few.fa", 3, 200)
    run_job(IsmJob(EXAMPLE_MODEL, str(fewer), str(tmp_path / "f.h5"), quiet=True))
    with pytest.raises(
        InputError, match="it holds 3 sequences, the input 8; rerun with --force"
    ):
        run_job(_job(tmp_path / "f.h5", resume=True))


def test_resume_of_a_file_another_program_holds(tmp_path):
    out = tmp_path / "o.h5"
    run_job(_job(out, positions="0:4"))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import h5py, sys, time\n"
         "f = h5py.File(sys.argv[1], 'r+'); print('open', flush=True); time.sleep(60)",
         str(out)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(
            InputError,
            match=r"another program has it open \(HDF5's file lock\); close it",
        ):
            run_job(_job(out, positions="0:4", resume=True))
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_results_file_messages(tmp_path):
    with pytest.raises(InputError, match=r"results file '.*' is a directory"):
        load_results(tmp_path)
    other = tmp_path / "v.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "ismkernel-variants"
    with pytest.raises(
        InputError,
        match=r"is not an ismkernel results file \(it is 'ismkernel-variants'\)",
    ):
        load_results(other)


def test_no_space_while_laying_out_or_writing_npz(tmp_path, monkeypatch):
    import ismkernel.job as job_module

    full = OSError(errno.ENOSPC, "No space left on device")

    def create(*args, **kwargs):
        raise full

    monkeypatch.setattr(ResultsFile, "create", create)
    with pytest.raises(
        OutputFileError,
        match=r"^no space left on device; nothing was written to '.*o\.h5'; free "
        "space and run again$",
    ):
        run_job(_job(tmp_path / "o.h5", positions="0:4"))

    def savez(*args, **kwargs):
        raise full

    monkeypatch.setattr(job_module.np, "savez", savez)
    with pytest.raises(
        OutputFileError,
        match=r"^no space left on device writing '.*o\.npz'; nothing was written "
        r"\(an npz file is written whole at the end\); free space and run again$",
    ):
        run_job(_job(tmp_path / "o.npz"))
    assert list(tmp_path.iterdir()) == []


def test_where_an_interrupted_run_left_its_results(tmp_path):
    job = _job(tmp_path / "o.h5")
    assert job.where_results_are() == "nothing was written"
    (tmp_path / "o.h5").write_text("")
    assert job.where_results_are().endswith(f"; '{tmp_path / 'o.h5'}' is untouched")
    job.writing, job.n_finished = str(tmp_path / "o.h5"), 3
    assert job.where_results_are() == (
        f"the 3 sequence(s) finished so far are in '{tmp_path / 'o.h5'}': rerun "
        "with --resume to finish it"
    )


def test_demo_out_dir_that_cannot_be_made(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    assert main(["demo", "--out-dir", str(tmp_path / "f" / "sub")]) == 2
    assert f"cannot create --out-dir '{tmp_path / 'f' / 'sub'}'" in (
        capsys.readouterr().err
    )
