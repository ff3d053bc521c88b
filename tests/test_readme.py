"""The README's Python snippets and the examples run as written, on the
bundled example model."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SNIPPETS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_the_readme_has_python_snippets():
    assert SNIPPETS


@pytest.mark.parametrize(
    "code", SNIPPETS, ids=[f"snippet{i}" for i in range(len(SNIPPETS))]
)
def test_readme_snippet_runs_as_written(code, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")  # the snippet plots
    monkeypatch.chdir(tmp_path)  # it writes out.h5 and fig.svg here
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})


def test_readme_links_the_examples():
    readme = (ROOT / "README.md").read_text()
    for link in re.findall(r"\]\((examples/[^)]+)\)", readme):
        assert (ROOT / link).exists(), link
    assert "(examples/quickstart.py)" in readme


def test_quickstart_example_runs(capsys):
    runpy.run_path(str(ROOT / "examples" / "quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "TGACTCA planted at 50-56" in out
