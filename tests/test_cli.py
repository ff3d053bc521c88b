"""The ismkernel command line."""

from __future__ import annotations

import subprocess
import sys

from conftest import REFUSED, fixture_path

from ismkernel import __version__
from ismkernel.cli import main


def test_inspect_prints_the_ir(capsys):
    assert main(["inspect", str(fixture_path("bpnet_mini.k2.h5"))]) == 0
    out = capsys.readouterr().out
    for text in [
        "Conv1D",
        "rconv4",
        "Crop1D",
        "profile (24, 2)",
        "counts (2,)",
        "Parameters: 1,196",
    ]:
        assert text in out


def test_inspect_reports_errors_with_exit_code_2(capsys):
    assert main(["inspect", str(REFUSED / "lambda_layer.k3.keras")]) == 2
    err = capsys.readouterr().err
    assert "UnsupportedLayerError" in err and "never runs code" in err


def test_console_entry_point_runs():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ismkernel",
            "inspect",
            str(fixture_path("conv_basic.k3.keras")),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Inputs:  dna (24, 4)" in proc.stdout
    version = subprocess.run(
        [sys.executable, "-m", "ismkernel", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert version.stdout.strip() == f"ismkernel {__version__}"
