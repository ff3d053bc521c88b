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
        "| reference naive s/seq | vs reference | fastISM s/seq (batch) "
        "| vs fastISM | PyTorch naive s/seq | vs PyTorch | peers timed on |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for path in sorted(RESULTS.glob("cpu-*.json")):
        data = json.loads(path.read_text())
        if "protocol" in data:
            notes.append(f"`{path.name}`: peers on {data['protocol']['peers']}.")
        for m in data["models"]:
            f, t, r = m.get("fastism"), m.get("torch"), m["reference"]
            timed = (f or t or r).get("positions_timed")
            out.append(
                f"| {m['model']} | {m['cpu']['seconds_per_seq']:.2f} "
                f"| {m['cpu']['mutants_per_second']:.0f} | {m['ceiling']:.1f}x "
                f"| {m['fraction_of_sgemm']:.0%} | {r['seconds_per_seq']:.1f} "
                f"| {m['speedup_over_reference']:.1f}x "
                + (
                    f"| {f['seconds_per_seq']:.2f} ({f['best_batch']}) "
                    f"| {f['ratio']:.1f}x "
                    if f
                    else "| - | - "
                )
                + (
                    f"| {t['seconds_per_seq']:.1f} | {t['ratio']:.1f}x "
                    if t
                    else "| - | - "
                )
                + f"| {timed} of {m['seq_len']} positions |"
            )
    return out + ([""] + notes if notes else [])


if __name__ == "__main__":
    print("\n".join(rows()))
    sys.exit(0)
