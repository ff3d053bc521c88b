"""Print a Markdown table of the CPU benchmark results in benchmarks/results/.

python benchmarks/table.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def rows() -> list[str]:
    out = [
        "| model | ismkernel cpu s/seq | mutants/s | FLOP ceiling | % of sgemm "
        "| vs reference naive | fastISM s/seq (batch) | vs fastISM | PyTorch naive s/seq | vs PyTorch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(RESULTS.glob("cpu-*.json")):
        data = json.loads(path.read_text())
        for m in data["models"]:
            f, t = m.get("fastism"), m.get("torch")
            out.append(
                f"| {m['model']} | {m['cpu']['seconds_per_seq']:.2f} "
                f"| {m['cpu']['mutants_per_second']:.0f} | {m['ceiling']:.1f}x "
                f"| {m['fraction_of_sgemm']:.0%} | {m['speedup_over_reference']:.1f}x "
                + (
                    f"| {f['seconds_per_seq']:.2f} ({f['best_batch']}) | {f['ratio']:.1f}x "
                    if f
                    else "| - | - "
                )
                + (
                    f"| {t['seconds_per_seq']:.1f} | {t['ratio']:.1f}x |"
                    if t
                    else "| - | - |"
                )
            )
    return out


if __name__ == "__main__":
    print("\n".join(rows()))
    sys.exit(0)
