"""Package hygiene: the public API, and no framework imported at run time."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import ismkernel

PACKAGE = Path(ismkernel.__file__).parent


def test_public_api():
    for name in ismkernel.__all__:
        assert hasattr(ismkernel, name), name
    assert re.fullmatch(r"\d+\.\d+\.\d+", ismkernel.__version__)


def test_no_deep_learning_framework_in_the_package():
    pattern = re.compile(
        r"^\s*(import|from)\s+(tensorflow|keras|tf_keras|torch)\b", re.M
    )
    offenders = [p.name for p in PACKAGE.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_import_pulls_in_no_gpu_or_framework_module():
    code = (
        "import sys, ismkernel; m = ismkernel.load_model(sys.argv[1]);"
        "bad = [k for k in sys.modules if k.split('.')[0] in "
        "('cupy', 'tensorflow', 'keras', 'torch', 'tf_keras') or k == 'numba.cuda'];"
        "print(bad)"
    )
    model = Path(__file__).parent / "fixtures" / "keras" / "conv_basic.k3.keras"
    out = subprocess.run(
        [sys.executable, "-c", code, str(model)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"


def test_ci_runs_exactly_the_readme_test_command():
    root = Path(__file__).parent.parent
    readme = (root / "README.md").read_text()
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(block) == 2, "the README opens with the two newcomer commands"
    assert block[0].endswith("ismkernel demo")  # the first ends by running the example
    ci = (root / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == block[1]


def test_example_data_ships_in_the_package_and_is_small():
    import ismkernel

    for path in (ismkernel.EXAMPLE_MODEL, ismkernel.EXAMPLE_FASTA):
        assert Path(path).is_file()
        assert Path(path).stat().st_size < 1_000_000
    assert Path(ismkernel.__file__).parent in Path(ismkernel.EXAMPLE_MODEL).parents


def test_quickstart_finds_the_planted_motifs():
    root = Path(__file__).parent.parent
    out = subprocess.run(
        [sys.executable, str(root / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert (
        "[50, 51, 52, 53, 54, 55, 56, 140, 141, 142, 143, 144, 145, 146]" in out.stdout
    )
