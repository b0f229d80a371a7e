"""The Dask client of a command that runs on a cluster (`rowrank precompute`, `rowrank train
--engine dask`): the scheduler at an address, or a LocalCluster of processes with one thread
each on this machine."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def dask_client(n_workers: int, scheduler: str | None) -> Iterator[tuple[Any, int]]:
    """(client, task slots): the slots are the cluster's threads, to size what is queued."""
    from distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:
        if scheduler:
            client = stack.enter_context(Client(scheduler))
            yield client, max(1, sum(client.nthreads().values()))
            return
        cluster = stack.enter_context(
            LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=True,
                # ":0" = any free port; None still tries 8787 and warns when it is taken.
                dashboard_address=":0",
                silence_logs=logging.ERROR,
            )
        )
        yield stack.enter_context(Client(cluster)), n_workers
