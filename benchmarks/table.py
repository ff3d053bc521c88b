"""Print Markdown tables of the benchmark results in benchmarks/results/:
full ISM (``cpu-*.json``), or with ``--edits`` the window scans, pairs and
design rounds (``edits-*.json``).

python benchmarks/table.py [--edits]
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


def edit_rows() -> list[str]:
    out = [
        "| model | case | ismkernel s/seq | peer | peer s/seq (batch) | vs peer "
        "| FLOP ceiling |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in sorted(RESULTS.glob("edits-*.json")):
        for m in json.loads(path.read_text())["models"]:
            for case, c in m["cases"].items():
                out.append(
                    f"| {m['model']} | {case} | {c['seconds_per_seq']:.2f} "
                    f"| {c['peer']} | {c['peer_seconds_per_seq']:.1f} "
                    f"({c['peer_best_batch']}) | {c['ratio']:.1f}x "
                    f"| {c['ceiling']:.1f}x |"
                )
    return out


if __name__ == "__main__":
    print("\n".join(edit_rows() if "--edits" in sys.argv[1:] else rows()))
    sys.exit(0)
