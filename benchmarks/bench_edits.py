"""Edits benchmark: window scans, pairwise double mutants and greedy design,
ismkernel against what users run today, in one run on one machine.

Run in the peer environment (``benchmarks/requirements.txt``: TensorFlow
builds the models, tangermeme and PyTorch are the peers)::

    python benchmarks/bench_edits.py --models basset-1000 bpnet-1000

For each model it first checks ismkernel's cpu backend against its reference
backend on every case (a sample of starts, pairs and rounds) and checks that
the PyTorch module the peers run computes the model's outputs; then it times:

- ``occlusion-10``, ``occlusion-100``: rows of zeros written over a window
  of 10 or 100 at every start. Peer: tangermeme's ``ablate`` with a
  ``shuffle_fn`` that writes zeros, one call per start, as users loop it.
- ``motif``: one motif (AP-1, ``TGACTCA``) written at every start. Peer:
  tangermeme's ``marginalize``, one call per start.
- ``pairs-50``: every pair of positions at most 50 apart, every pair of
  bases. Peer: the double mutants (both bases differ from the sequence's)
  by explicit batched forward passes in PyTorch.
- ``design-5``: five rounds of greedy design by point mutations, maximising
  one task. Peer: tangermeme's ``greedy_substitution`` (``motifs=None``,
  ``max_iter=5``, ``tol=-inf``).

Peers are timed at their best batch size of a sweep, on every
``--peer-every``-th start (or first position of a pair), and scaled to all
of them; the JSON records what was timed. Results go to
``benchmarks/results/edits-<host>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models  # noqa: E402
import peers  # noqa: E402
from machine import machine_info  # noqa: E402

import ismkernel  # noqa: E402
from ismkernel.analyses import _PairRun, _ScanRun  # noqa: E402
from ismkernel.ism import IsmRun  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
AP1 = "TGACTCA"


def one_hot(n: int, seq_len: int, seed: int = 0) -> np.ndarray:
    idx = np.random.default_rng(seed).integers(0, 4, (n, seq_len))
    return np.eye(4, dtype=np.float32)[idx]


def motif_rows(motif: str) -> np.ndarray:
    return np.eye(4, dtype=np.float32)[["ACGT".index(c) for c in motif]]


def rel_err(a, b) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def timed(fn, repeat: int = 1):
    """Seconds of the fastest of ``repeat`` calls (after one warm call), and
    its result."""
    fn()
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def ceiling(run, model, x) -> dict:
    plan = run.plan_for(x)[3]
    return dict(
        flops_naive_per_edit=plan.flops_naive,
        flops_plan_per_edit=plan.flops_plan,
        ceiling=plan.ceiling,
    )


class _NCL:
    """The peers' PyTorch module: channels first in, one chosen output out
    (or all)."""

    def __init__(self, net, output: int | None = None):
        import torch

        class Wrap(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, x):
                ys = self.net(x.transpose(1, 2))
                return ys if output is None else ys[output]

        self.module = Wrap().eval()


def peer_scan(net, x, width, starts, rows, kind, batches):
    """tangermeme, one call per start: ``ablate`` writing ``rows`` (zeros)
    or ``marginalize`` writing a motif."""
    import torch
    from tangermeme.ablate import ablate
    from tangermeme.marginalize import marginalize

    X = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1)))

    def write(X_, start, end, n, random_state=None):
        out = X_.unsqueeze(1).repeat(1, n, 1, 1)
        out[:, :, :, start:end] = torch.from_numpy(rows.T.copy())
        return out

    sweep = {}
    for b in batches:

        def one(s, b=b):
            with torch.inference_mode():
                if kind == "ablate":
                    return ablate(
                        net, X, int(s), int(s) + width, n=1, shuffle_fn=write,
                        batch_size=b, device="cpu",
                    )  # fmt: skip
                return marginalize(
                    net, X, AP1, start=int(s), batch_size=b, device="cpu"
                )

        one(starts[0])  # warm
        t0 = time.perf_counter()
        for s in starts:
            one(s)
        sweep[b] = time.perf_counter() - t0
    best = min(sweep, key=sweep.get)
    return sweep[best], best, sweep


def peer_pairs(net, x, pairs, batches):
    """Explicit batched double mutants in PyTorch: both bases differ from the
    sequence's (the true double mutants)."""
    import torch

    seq = x.argmax(-1)
    jobs = []
    for n in range(x.shape[0]):
        for i, j in pairs:
            for a in range(4):
                if a == seq[n, i]:
                    continue
                for c in range(4):
                    if c != seq[n, j]:
                        jobs.append((n, i, j, a, c))
    jobs = np.asarray(jobs)
    eye = np.eye(4, dtype=np.float32)
    sweep = {}
    for b in batches:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for b0 in range(0, len(jobs), b):
                job = jobs[b0 : b0 + b]
                xb = x[job[:, 0]].copy()
                r = np.arange(len(job))
                xb[r, job[:, 1]] = eye[job[:, 3]]
                xb[r, job[:, 2]] = eye[job[:, 4]]
                net(torch.from_numpy(xb.transpose(0, 2, 1).copy()))
        sweep[b] = time.perf_counter() - t0
    best = min(sweep, key=sweep.get)
    return sweep[best], best, sweep, len(jobs)


def peer_design(net, x, rounds, task, batches):
    import torch
    from tangermeme.design import greedy_substitution

    X = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1)))
    sweep, outs = {}, {}
    for b in batches:
        t0 = time.perf_counter()
        designed = []
        for n in range(X.shape[0]):
            mask = torch.zeros(net.n_outputs, dtype=bool)
            mask[task] = True
            designed.append(
                greedy_substitution(
                    net,
                    X[n : n + 1],
                    motifs=None,
                    max_iter=rounds,
                    tol=-float("inf"),
                    output_mask=mask,
                    batch_size=b,
                    device="cpu",
                )  # fmt: skip
            )
        sweep[b] = time.perf_counter() - t0
        outs[b] = torch.cat(designed).numpy().transpose(0, 2, 1)
    best = min(sweep, key=sweep.get)
    return sweep[best], best, sweep, outs[best]


def bench_model(name: str, args, workdir: Path) -> dict:
    import torch

    torch.set_num_threads(args.torch_threads)
    keras_model = models.build(name)
    path = workdir / f"{name}.h5"
    keras_model.save(path)
    model = ismkernel.load_model(path)
    seq_len = model.inputs[0].shape[0]
    x = one_hot(args.n_seqs, seq_len)
    out = dict(model=name, seq_len=seq_len, n_seqs=args.n_seqs, cases={})
    names = model.output_names
    # the task the design and pairs score: the first channel of the last output
    k_out = len(names) - 1
    small = model.select_outputs([names[k_out]])

    # The peers' module computes the model (the pruned one, for pairs/design).
    nets = {}
    for key, m in (("full", model), ("small", small)):
        net = peers.torch_model(m.graph)
        with torch.inference_mode():
            ys = net(torch.from_numpy(x))
        err = max(rel_err(y.numpy(), z) for y, z in zip(ys, m.predict(x)))
        if not err <= 1e-4:
            raise SystemExit(f"{name}: the PyTorch module differs by {err:.2e}")
        nets[key] = net
    out["torch_check_rel_err"] = err
    full_net = _NCL(nets["full"]).module
    small_net = _NCL(nets["small"], output=0).module
    small_net.n_outputs = small.outputs[0].shape[-1]

    every = args.peer_every

    def scan_case(case, rows, peer_fn):
        """Scans of ``rows`` at every start, checked against the reference at
        the ends and the middle, then timed against tangermeme's ``peer_fn``
        on every ``every``-th start."""
        width = len(rows)
        starts = np.arange(seq_len - width + 1)
        check = starts[[0, len(starts) // 2, -1]]
        a = ismkernel.scan(model, x[:1], rows[None], starts=check)
        b = ismkernel.scan(model, x[:1], rows[None], starts=check, backend="reference")
        err = max(rel_err(u, v) for u, v in zip(a.outputs, b.outputs))
        assert err <= 1e-4, (case, err)
        dt, _ = timed(lambda: ismkernel.scan(model, x, rows[None]))
        peer_dt, peer_b, sweep = peer_scan(
            full_net, x, width, starts[::every], rows, peer_fn, args.batches
        )
        peer_dt *= len(starts) / len(starts[::every])
        out["cases"][case] = dict(
            check_rel_err=err,
            seconds_per_seq=dt / args.n_seqs,
            peer=f"tangermeme.{peer_fn}",
            peer_seconds_per_seq=peer_dt / args.n_seqs,
            peer_best_batch=peer_b,
            peer_sweep=sweep,
            peer_starts_timed=len(starts[::every]),
            ratio=peer_dt / dt,
            **ceiling(_ScanRun(model, rows[None], None), model, x),
        )
        print(name, case, out["cases"][case]["ratio"], flush=True)

    for width in (10, 100):
        scan_case(f"occlusion-{width}", np.zeros((width, 4), np.float32), "ablate")
    scan_case("motif", motif_rows(AP1), "marginalize")

    d = args.max_distance
    probe = [[0, 1], [seq_len // 2, seq_len // 2 + d], [seq_len - d - 1, seq_len - 1]]
    a = ismkernel.pairwise(small, x[:1], pairs=probe)
    b = ismkernel.pairwise(small, x[:1], pairs=probe, backend="reference")
    err = rel_err(a.outputs[0], b.outputs[0])
    assert err <= 1e-4, ("pairs", err)
    dt, res = timed(lambda: ismkernel.pairwise(small, x, max_distance=d), repeat=1)
    pairs = res.pairs
    firsts = np.unique(pairs[:, 0])[::every]
    sub = pairs[np.isin(pairs[:, 0], firsts)]
    peer_dt, peer_b, sweep, n_jobs = peer_pairs(small_net, x, sub, args.pair_batches)
    peer_dt *= len(pairs) / len(sub)
    alts = np.eye(4, dtype=np.float32)
    out["cases"]["pairs-50"] = dict(
        check_rel_err=err,
        seconds_per_seq=dt / args.n_seqs,
        n_pairs=len(pairs),
        n_independent=int(res.independent.sum()),
        output=names[k_out],
        peer="torch explicit double mutants",
        peer_seconds_per_seq=peer_dt / args.n_seqs,
        peer_best_batch=peer_b,
        peer_sweep=sweep,
        peer_pairs_timed=len(sub),
        peer_mutants_timed=n_jobs,
        ratio=peer_dt / dt,
        **ceiling(_PairRun(small, pairs, alts), small, x),
    )
    print(name, "pairs-50", out["cases"]["pairs-50"]["ratio"], flush=True)

    objective = {"output": names[k_out], "tasks": [0], "goal": "max"}
    rounds = args.rounds
    a = ismkernel.design(model, x[:1], objective, rounds=2)
    b = ismkernel.design(model, x[:1], objective, rounds=2, backend="reference")
    assert np.array_equal(a.edits, b.edits), "design differs from reference"
    dt, res = timed(lambda: ismkernel.design(model, x, objective, rounds=rounds))
    peer_dt, peer_b, sweep, peer_seqs = peer_design(
        small_net, x, rounds, 0, args.design_batches
    )
    same = bool(np.array_equal(peer_seqs, res.sequences))
    out["cases"]["design-5"] = dict(
        seconds_per_seq=dt / args.n_seqs,
        peer="tangermeme.greedy_substitution",
        peer_seconds_per_seq=peer_dt / args.n_seqs,
        peer_best_batch=peer_b,
        peer_sweep=sweep,
        same_sequences_as_peer=same,
        objective=res.objective.tolist(),
        ratio=peer_dt / dt,
        **ceiling(IsmRun(small), small, x),
    )
    print(name, "design-5", out["cases"]["design-5"]["ratio"], flush=True)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["basset-1000", "bpnet-1000"])
    p.add_argument("--n-seqs", type=int, default=1)
    p.add_argument("--peer-every", type=int, default=4)
    p.add_argument("--max-distance", type=int, default=50)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    p.add_argument("--pair-batches", type=int, nargs="+", default=[64, 256])
    p.add_argument("--design-batches", type=int, nargs="+", default=[64, 256])
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    report = dict(
        kind="edits",
        machine=machine_info(),
        protocol=dict(
            peer_every=args.peer_every,
            n_seqs=args.n_seqs,
            note=(
                "peers at their best batch of the sweep; scans timed on every "
                "peer_every-th start, pairs on the pairs whose first position is "
                "every peer_every-th, scaled to all; design timed in full"
            ),
        ),
        models=[],
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            report["models"].append(bench_model(name, args, Path(tmp)))
    RESULTS.mkdir(exist_ok=True)
    path = Path(args.out) if args.out else RESULTS / f"edits-{platform.node()}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
