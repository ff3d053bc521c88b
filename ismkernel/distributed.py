"""Chunks of work on a Dask distributed cluster, results back in input order.

Dask is an optional extra (``pip install 'ismkernel[dask]'``); nothing here
imports it unless a client or a worker count is given. The model is sent to
every worker once (``scatter(broadcast=True)``); each task then scores one
chunk with it. Results come back in input order, whatever order the chunks
finish in, so a caller can write them as a serial run would; a worker that
dies mid-run has its chunks recomputed elsewhere by Dask, and since a chunk's
result depends only on its input, the output is unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from ismkernel.errors import BackendUnavailableError, InputError

__all__ = ["map_ordered", "cluster_client"]


def _distributed():
    try:
        import distributed
    except ImportError:
        raise BackendUnavailableError(
            "running on a Dask cluster needs dask.distributed: pip install "
            "'ismkernel[dask]'"
        ) from None
    return distributed


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def blas_env() -> dict[str, str]:
    """This process's BLAS thread settings, for worker processes.

    OpenBLAS blocks a GEMM differently for another thread count, which moves
    float32 results by an ulp; Dask starts workers with one thread each. A
    local cluster started with these settings computes exactly what this
    process would (workers on other machines need the same BLAS and thread
    count for that).
    """
    default = str(os.cpu_count() or 1)
    return {name: os.environ.get(name, default) for name in _THREAD_VARS}


@contextmanager
def cluster_client(
    scheduler: str | None = None, workers: int | None = None, client: Any = None
):
    """``client`` if given; else a client of the cluster at ``scheduler``, or
    of a local cluster of ``workers`` processes started (and stopped) here;
    None when neither."""
    if client is not None:
        yield client
        return
    if scheduler is None and workers is None:
        yield None
        return
    if scheduler is not None and workers is not None:
        raise InputError("give either --scheduler or --workers, not both")
    distributed = _distributed()
    if scheduler is not None:
        try:
            client = distributed.Client(scheduler, timeout="20s")
        except OSError as err:
            raise InputError(
                f"cannot reach the Dask scheduler at {scheduler}: {err}"
            ) from None
        try:
            yield client
        finally:
            client.close()
        return
    if workers < 1:
        raise InputError(f"--workers must be a positive integer, got {workers}")
    import dask

    # BLAS reads its thread count when it loads, before a worker applies
    # ``env``: the settings must be in the environment the nanny spawns with.
    spawn_env = {
        **dask.config.get("distributed.nanny.pre-spawn-environ", {}),
        **blas_env(),
    }
    # (kept for the cluster's life: a nanny restarting a dead worker reads it)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": spawn_env}):
        cluster = distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
        client = distributed.Client(cluster)
        try:
            yield client
        finally:
            client.close()
            cluster.close()


def map_ordered(
    client: Any,
    fn: Callable,
    model: Any,
    chunks: Iterable[Any],
    *args: Any,
    window: int | None = None,
    **kwargs: Any,
) -> Iterator[Any]:
    """``fn(model, chunk, *args, **kwargs)`` for every chunk on the cluster,
    yielded in the order of ``chunks``. At most ``window`` chunks are in
    flight (default: four per worker), so memory stays bounded on both sides.
    """
    distributed = _distributed()
    model_future = client.scatter(model, broadcast=True)
    if window is None:
        window = max(2, 4 * max(1, len(client.scheduler_info().get("workers", {}))))
    pending: dict[int, Any] = {}
    ready: dict[int, Any] = {}
    chunks = iter(chunks)
    next_out = 0
    submitted = 0
    exhausted = False
    while True:
        while not exhausted and len(pending) + len(ready) < window:
            try:
                chunk = next(chunks)
            except StopIteration:
                exhausted = True
                break
            pending[submitted] = client.submit(
                fn, model_future, chunk, *args, pure=False, **kwargs
            )
            submitted += 1
        if next_out in ready:
            yield ready.pop(next_out)
            next_out += 1
            continue
        if not pending:
            if exhausted:
                return
            continue
        done = distributed.wait(
            list(pending.values()), return_when="FIRST_COMPLETED"
        ).done
        for i, fut in list(pending.items()):
            if fut in done:
                ready[i] = fut.result()
                del pending[i]
