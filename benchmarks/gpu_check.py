"""Validate and time the cuda backend on a GPU in one go (run by
``gpu_check.sh``; see ``benchmarks/README.md``).

Steps, each recorded in ``OUT/gpu_check.json`` as soon as it ends, each
skipped (and said so) once the deadline is near:

1. environment: GPU, driver, versions;
2. the kernel tests on the device, on a non-default stream, outputs NaN first
   (``OUT/kernel_tests.txt``);
3. ``cuda`` against ``cpu`` on every fixture to 1e-5 of the output's scale,
   Basset-1000 and BPNet-1000 on 2 sequences x 64 positions (ends included),
   and two runs giving identical bits (a moving result is a race);
4. ceilings: device copy bandwidth, float32 and TF32 8192^3 matmuls;
5. timings: ms per sequence and mutants per second of full ISM on
   Basset-1000, Factorized Basset-1000, BPNet-1000 and Beluga-2000, in
   float32 and TF32, the plan FLOP rate against the float32 peak, and the
   top nodes by time in a run synchronised after every kernel;
6. the peer in the same run: naive batched PyTorch ISM (cuDNN) at its best
   batch size, strict float32 and TF32.

``--simulate`` runs the same steps with no GPU: ``cuda-emulated`` for
``cuda``, the kernels under the CUDA simulator, NumPy for the ceilings and
PyTorch on the CPU (if installed); ``--tiny`` shrinks the models and the
fixture set so that it all takes a minute on two cores (CI runs both).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE), str(ROOT / "tests")]

MODELS = ["basset-1000", "factorized-basset-1000", "bpnet-1000", "beluga-2000"]
#: Sequences timed per model (full ISM of every position, three other bases).
N_SEQS = {"basset-1000": 16, "factorized-basset-1000": 16, "bpnet-1000": 4}
TARGETS = {
    "basset-1000 float32 vs strict-float32 peer": 10.0,
    "bpnet-1000 float32 vs strict-float32 peer": 5.0,
    "basset-1000 tf32 vs tf32 peer": 10.0,
    "bpnet-1000 tf32 vs tf32 peer": 5.0,
}
PEAK_TARGET = 0.30


class Check:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.deadline
        self.backend = "cuda-emulated" if args.simulate else "cuda"
        self.result: dict = dict(
            mode=("simulate" if args.simulate else "device")
            + (", tiny" if args.tiny else ""),
            started=time.strftime("%Y-%m-%d %H:%M:%S"),
            backend=self.backend,
            steps={},
        )

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        self.result["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        path = self.out / "gpu_check.json"
        path.write_text(json.dumps(self.result, indent=1, default=str) + "\n")

    def step(self, name: str, fn, need: float) -> None:
        """Run step ``fn`` if ``need`` seconds remain; record what it
        returns, or why it was skipped or failed."""
        log(f"== {name} ({self.left():.0f} s left)")
        if self.left() < need:
            rec = dict(status="skipped", why=f"deadline: {self.left():.0f} s left")
        else:
            t = time.monotonic()
            try:
                rec = dict(status="ok", **fn())
            except Exception as err:
                rec = dict(
                    status="failed", error=repr(err), trace=traceback.format_exc()
                )
            rec["seconds"] = round(time.monotonic() - t, 1)
        self.result["steps"][name] = rec
        log(f"   {rec['status']} {rec.get('error', '')}")
        self.save()


def log(msg: str) -> None:
    print(msg, flush=True)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# -- 1 -----------------------------------------------------------------------
def environment(c: Check) -> dict:
    env = dict(
        python=platform.python_version(),
        machine=platform.machine(),
        cpus=os.cpu_count(),
        versions={
            d: _version(d)
            for d in (
                "numpy",
                "scipy",
                "numba",
                "numba-cuda",
                "cupy-cuda12x",
                "cupy-cuda13x",
                "torch",
                "h5py",
                "threadpoolctl",
                "tqdm",
                "nvidia-nvvm",
            )
        },
    )
    if c.args.simulate:
        env["gpu"] = "none (simulated)"
        return env
    import cupy

    from ismkernel.backends.cuda import memory

    ok, why = memory.probe()
    if not ok:
        raise RuntimeError(f"no usable GPU: {why}")
    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    env.update(
        gpu=memory.device_name(),
        compute_capability=dev.compute_capability,
        memory_bytes=int(props["totalGlobalMem"]),
        sms=int(props["multiProcessorCount"]),
        driver=cupy.cuda.runtime.driverGetVersion(),
        runtime=cupy.cuda.runtime.runtimeGetVersion(),
    )
    try:
        env["nvidia_smi"] = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,clocks.max.sm",
                "--format=csv",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
    except Exception as err:  # not on PATH
        env["nvidia_smi"] = repr(err)
    return env


# -- 2 -----------------------------------------------------------------------
def kernel_tests(c: Check) -> dict:
    env = dict(
        os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    )
    files = [str(ROOT / "tests" / "test_cuda_kernels.py")]
    if c.args.simulate:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
        select = "simulator and not under_the_simulator"
    else:
        files.append(str(ROOT / "tests" / "test_cuda_backend.py"))
        select = "device or numpy_in_numpy_out"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *files,
            "-k",
            select,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=max(10, min(180, c.left() - 150)),
    )
    text = run.stdout + run.stderr
    (c.out / "kernel_tests.txt").write_text(text)
    summary = text.strip().splitlines()[-1] if text.strip() else ""
    if run.returncode != 0 or " passed" not in summary:
        raise RuntimeError(f"kernel tests: {summary}")
    return dict(summary=summary)


# -- 3 -----------------------------------------------------------------------
def _rel_err(a, b) -> float:
    scale = max(float(np.nanmax(np.abs(b))) if b.size else 0.0, 1e-30)
    return float(np.nanmax(np.abs(a - b))) / scale if b.size else 0.0


def _compare(model, x, backend, **kw) -> dict:
    import ismkernel

    cpu = ismkernel.ism(model, x, backend="cpu", **kw)
    one = ismkernel.ism(model, x, backend=backend, **kw)
    two = ismkernel.ism(model, x, backend=backend, **kw)
    err = max(_rel_err(a, b) for a, b in zip(one.outputs, cpu.outputs))
    same = all(
        np.array_equal(a, b, equal_nan=True) for a, b in zip(one.outputs, two.outputs)
    )
    return dict(rel_err=err, ok=err <= 1e-5, repeatable=same)


def parity(c: Check) -> dict:
    import conftest
    import gpu_models
    from peers import subset_positions

    import ismkernel
    from ismkernel.model import Model

    names = conftest.MODEL_FILES[:6] if c.args.tiny else conftest.MODEL_FILES
    fixtures, bad = {}, []
    for name in names:
        if c.left() < 120:
            fixtures["(rest)"] = "skipped: deadline"
            break
        model = ismkernel.load_model(conftest.fixture_path(name))
        xs = conftest.fixture_inputs(conftest.fixture_data(name), "onehot")
        rec = _compare(model, xs if len(xs) > 1 else xs[0], c.backend)
        fixtures[name] = rec
        if not (rec["ok"] and rec["repeatable"]):
            bad.append(name)
    big = {}
    rng = np.random.default_rng(1)
    for name in ("basset-1000", "bpnet-1000"):
        graph = gpu_models.build(name, tiny=c.args.tiny)
        seq_len = graph.nodes[graph.inputs[0]].shape[0]
        x = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (2, seq_len))]
        pos = subset_positions(seq_len, 64)
        big[name] = _compare(Model(graph), x, c.backend, positions=pos)
        if not (big[name]["ok"] and big[name]["repeatable"]):
            bad.append(name)
    if bad:
        raise RuntimeError(f"differs from cpu or between runs: {bad}; {big}")
    return dict(fixtures=fixtures, models=big, tolerance="1e-5 of max |cpu output|")


# -- 4 -----------------------------------------------------------------------
def ceilings(c: Check) -> dict:
    if c.args.simulate:
        n = 256
        a = np.ones((n, n), np.float32)
        t = time.perf_counter()
        a @ a
        return dict(
            note="simulated: NumPy on the host, not a device ceiling",
            float32_tflops=2 * n**3 / (time.perf_counter() - t) / 1e12,
        )
    import cupy

    from ismkernel.backends.cuda import memory

    def timed(fn, reps):
        fn()
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(reps):
            fn()
        stop.record()
        stop.synchronize()
        return cupy.cuda.get_elapsed_time(start, stop) / 1e3 / reps

    src = cupy.ones(2**28, dtype=cupy.float32)  # 1 GiB
    dst = cupy.empty_like(src)
    copy_s = timed(lambda: cupy.copyto(dst, src), 10)
    src = dst = None  # give the 2 GiB back before the matmuls
    n = 8192
    a = cupy.random.default_rng(0).standard_normal((n, n), dtype=cupy.float32)
    out = {"copy_GBps": 2 * 2**30 / copy_s / 1e9}
    for prec in ("float32", "tf32"):
        with memory.precision(prec):
            s = timed(lambda: cupy.matmul(a, a), 5)
        out[f"{prec}_tflops"] = 2 * n**3 / s / 1e12
    return out


# -- 5 -----------------------------------------------------------------------
def _ism_once(backend, model, x, precision="float32"):
    """Full ISM of ``x`` through the backend's own entry; seconds, stats."""
    from ismkernel.backends import get_backend
    from ismkernel.reduce import OutputSink

    dev = get_backend(backend)
    graph = model.graph
    feeds = model.feeds(x, np.dtype(np.float32))
    seq = graph.inputs[0]
    plan = _ism_once.plans.get((backend, id(graph)))
    if plan is None:
        plan = dev.plan(
            graph,
            seq,
            {seq: feeds[0].shape[1:]},
            np.arange(feeds[0].shape[1]),
            alternatives=np.eye(4, dtype=np.float32),
        )
        _ism_once.plans[(backend, id(graph))] = plan
    t = time.perf_counter()
    stats = dev.run(plan, feeds, OutputSink(), precision=precision)
    return time.perf_counter() - t, stats, plan


_ism_once.plans = {}


def _synchronised(backend):
    """A context in which every kernel launch and GEMM of ``backend`` waits
    for the device, so the walker's per-node times are device times."""
    import contextlib

    from ismkernel.backends import get_backend

    dev = get_backend(backend)

    @contextlib.contextmanager
    def ctx():
        if dev.name != "cuda":
            yield
            return
        launch, gemm = dev.kernels.launch, dev.gemm

        def synced_launch(*a):
            launch(*a)
            dev.xp.cuda.get_current_stream().synchronize()

        def synced_gemm(*a, **k):
            out = gemm(*a, **k)
            dev.xp.cuda.get_current_stream().synchronize()
            return out

        dev.kernels.launch, dev.gemm = synced_launch, synced_gemm
        try:
            yield
        finally:
            dev.kernels.launch = launch
            del dev.gemm

    return ctx()


def timings(c: Check) -> dict:
    import gpu_models

    from ismkernel.model import Model

    peak = c.result["steps"].get("ceilings", {}).get("float32_tflops")
    rng = np.random.default_rng(2)
    out = {}
    for name in MODELS:
        if c.left() < 100:
            out[name] = "skipped: deadline"
            continue
        graph = gpu_models.build(name, tiny=c.args.tiny)
        model = Model(graph)
        seq_len = graph.nodes[graph.inputs[0]].shape[0]
        n = 2 if c.args.tiny else N_SEQS.get(name, 4)
        x = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (n, seq_len))]
        rec = dict(n_seqs=n, seq_len=seq_len)
        precisions = ("float32",) if c.args.simulate else ("float32", "tf32")
        for prec in precisions:
            _ism_once(c.backend, model, x[:1], prec)  # compile, upload, warm
            s, stats, plan = _ism_once(c.backend, model, x, prec)
            d = stats.as_dict()
            mutants = d["n_mutants"] + d["n_copied"]
            flops = d["flops_plan"] * d["n_mutants"] / s
            rec[prec] = dict(
                ms_per_seq=1e3 * s / n,
                mutants_per_s=mutants / s,
                plan_gflops=flops / 1e9,
                fraction_of_float32_peak=None if not peak else flops / (peak * 1e12),
                chunk_size=d["chunk_size"],
                block_size=d["block_size"],
            )
        with _synchronised(c.backend):
            s, stats, plan = _ism_once(c.backend, model, x[:1])
        secs = {k: v for k, v in stats.seconds.items()}
        top = sorted(secs.items(), key=lambda kv: -kv[1])[:8]
        rec["top_nodes_ms_per_seq"] = {
            k: dict(
                ms=round(1e3 * v, 3),
                tactic=plan.nodes[k].tactic if k in plan.nodes else "",
            )
            for k, v in top
        }
        rec["flops_per_mutant"] = dict(naive=plan.flops_naive, plan=plan.flops_plan)
        out[name] = rec
    return out


# -- 6 -----------------------------------------------------------------------
def peer(c: Check) -> dict:
    try:
        import torch
    except ImportError:
        return dict(note="PyTorch is not installed: no peer")
    import gpu_models
    import peers

    device = "cpu" if c.args.simulate else "cuda"
    batches = [16, 64] if c.args.tiny else [256, 1024, 4096]
    rng = np.random.default_rng(3)
    out = {}
    for name in MODELS:
        if c.left() < 40:
            out[name] = "skipped: deadline"
            continue
        graph = gpu_models.build(name, tiny=c.args.tiny)
        net = peers.torch_model(graph)
        net.params = {k: v.to(device) for k, v in net.params.items()}
        seq_len = graph.nodes[graph.inputs[0]].shape[0]
        n = 2
        x = torch.from_numpy(
            np.eye(4, dtype=np.float32)[rng.integers(0, 4, (n, seq_len))]
        ).to(device)
        pos = peers.subset_positions(seq_len, 8 if c.args.tiny else 32)
        rec = dict(positions_timed=len(pos), n_seqs=n)
        for prec in ("float32", "tf32"):
            torch.backends.cuda.matmul.allow_tf32 = prec == "tf32"
            torch.backends.cudnn.allow_tf32 = prec == "tf32"
            sweep = {}
            for b in batches:
                try:
                    _torch_ism(net, x, pos, b, device)  # warm
                    t = time.perf_counter()
                    _torch_ism(net, x, pos, b, device)
                    sweep[b] = (time.perf_counter() - t) / n * seq_len / len(pos)
                except RuntimeError as err:  # out of memory
                    sweep[b] = repr(err)[:200]
                    if device == "cuda":
                        torch.cuda.empty_cache()
            timed = {b: s for b, s in sweep.items() if isinstance(s, float)}
            best = min(timed, key=timed.get)
            rec[prec] = dict(ms_per_seq=1e3 * timed[best], best_batch=best, sweep=sweep)
        out[name] = rec
    out["settings"] = (
        "strict float32: allow_tf32 off for matmul and cuDNN; tf32: both on"
    )
    return out


def _torch_ism(net, x, positions, batch, device):
    """Naive batched ISM on the device: every (sequence, position, other
    base), mutated in place on the device, outputs kept there."""
    import torch

    with torch.inference_mode():
        ref = x.argmax(-1)
        s, p, a = torch.meshgrid(
            torch.arange(x.shape[0], device=device),
            torch.as_tensor(positions, device=device),
            torch.arange(4, device=device),
            indexing="ij",
        )
        keep = a != ref[s, p]
        s, p, a = s[keep], p[keep], a[keep]
        eye = torch.eye(4, device=device)
        outs = []
        for b0 in range(0, len(s), batch):
            sl = slice(b0, b0 + batch)
            xb = x[s[sl]].clone()
            xb[torch.arange(len(xb), device=device), p[sl]] = eye[a[sl]]
            outs.append(net(xb))
        if device == "cuda":
            torch.cuda.synchronize()
    return outs


def verdict(c: Check) -> dict:
    """The issue's targets, like against like (pending without a GPU)."""
    steps = c.result["steps"]
    t, p = steps.get("timings", {}), steps.get("peer", {})
    out = {}
    for key, target in TARGETS.items():
        model, prec = key.split()[0], key.split()[1]
        try:
            ratio = p[model][prec]["ms_per_seq"] / t[model][prec]["ms_per_seq"]
        except (KeyError, TypeError):
            out[key] = dict(target=target, status="pending")
            continue
        status = (
            "pending (simulated)"
            if c.args.simulate
            else ("met" if ratio >= target else "not met")
        )
        out[key] = dict(target=target, ratio=ratio, status=status)
    try:
        frac = t["basset-1000"]["float32"]["fraction_of_float32_peak"]
        status = (
            "pending (simulated)"
            if c.args.simulate
            else ("met" if frac is not None and frac >= PEAK_TARGET else "not met")
        )
        out["basset-1000 float32 fraction of peak"] = dict(
            target=PEAK_TARGET, value=frac, status=status
        )
    except (KeyError, TypeError):
        out["basset-1000 float32 fraction of peak"] = dict(status="pending")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--simulate", action="store_true")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--deadline", type=float, default=330.0, help="seconds")
    args = ap.parse_args(argv)
    if args.simulate:
        os.environ.setdefault("OMP_NUM_THREADS", "2")
    c = Check(args)
    c.step("environment", lambda: environment(c), 0)
    if c.result["steps"]["environment"]["status"] != "ok":
        return 2
    c.step("kernel_tests", lambda: kernel_tests(c), 60)
    c.step("parity", lambda: parity(c), 60)
    c.step("ceilings", lambda: ceilings(c), 30)
    c.step("timings", lambda: timings(c), 60)
    c.step("peer", lambda: peer(c), 30)
    c.result["targets"] = verdict(c)
    c.save()
    failed = [k for k, v in c.result["steps"].items() if v["status"] == "failed"]
    log(f"== done in {time.monotonic() - c.t0:.0f} s; failed steps: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
