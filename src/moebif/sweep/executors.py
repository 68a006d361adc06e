"""Where the tasks of a sweep run: in this process, in local processes, or on a Dask cluster.

Every executor takes a list of :class:`~moebif.sweep.tasks.Task` and yields their
:class:`~moebif.sweep.tasks.TaskResult` as they finish (in any order); the runner writes each
one to the store as it arrives. The values do not depend on the executor (each cell has its own
seed), only the speed does.

- :class:`InProcess`: one task after the other in this process (numba keeps its own threads).
- :class:`LocalProcesses`: a :class:`concurrent.futures.ProcessPoolExecutor` of ``workers``
  fresh (spawned) processes, one numba thread each.
- :class:`DaskExecutor`: a ``dask.distributed`` cluster, either an existing one
  (``address="tcp://host:8786"``) or a ``LocalCluster`` of ``local_workers`` processes with one
  thread each. Tasks are Dask futures submitted with ``retries``; the scheduler re-runs the tasks
  of a worker that dies (up to ``distributed.scheduler.allowed-failures`` times) and the results
  come back to this process, so the workers need moebif installed but no shared file system.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import signal
import uuid
from collections.abc import Iterable, Iterator

from .tasks import Task, TaskResult, run_task, versions

__all__ = [
    "CONNECT_TIMEOUT",
    "DaskExecutor",
    "Executor",
    "ExecutorError",
    "InProcess",
    "LocalProcesses",
]

CONNECT_TIMEOUT = 2.0
"""Seconds to reach a scheduler (``--connect-timeout``): the name lookup and TCP connect, then
again Dask's handshake. A scheduler that answers at all answers within milliseconds; an address
that drops packets would otherwise keep ``moebif sweep`` waiting for Dask's own 10 s (or more)."""


class ExecutorError(RuntimeError):
    """The executor cannot start (no scheduler at the address, mismatched worker versions)."""


class Executor:
    """Base: ``run(tasks)`` yields results as they finish; use as a context manager."""

    name = "executor"
    #: numba threads inside each task (``None``: leave numba's setting)
    threads: int | None = 1
    dashboard: str | None = None

    @property
    def workers(self) -> int:
        return 1

    def describe(self) -> str:
        return self.name

    def warm_up(self) -> None:
        """Start the workers and load the compiled kernels in each (before timing a sweep)."""

    def run(self, tasks: Iterable[Task]) -> Iterator[TaskResult]:
        raise NotImplementedError

    def quiet(self) -> None:
        """Silence the executor's own logging before an interrupted close (its workers would
        otherwise report every cancelled task)."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InProcess(Executor):
    """Run the tasks here, one after the other."""

    name = "in-process"

    def __init__(self, *, threads: int | None = None):
        self.threads = threads

    def run(self, tasks):
        for t in tasks:
            yield run_task(t)


@contextlib.contextmanager
def _sigint_ignored():
    """Ignore SIGINT while child processes are started (only from the main thread)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _quiet_logs() -> None:
    import logging

    logging.getLogger("distributed").setLevel(logging.CRITICAL)


def _worker_init() -> None:
    # Ctrl-C is the parent's business: it cancels the pool; children must not print tracebacks
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _warm() -> dict:
    # load the compiled kernels once per process (a tiny run), before any timed task
    from ..params import RouterParams
    from ..sim.router import simulate_batch_router
    from ..sim.topk_router import simulate_topk_router

    p = RouterParams(a=1.0, gamma=1.0, T=1.0, n_experts=3)
    simulate_batch_router(p.replace(n_experts=2), batch=2, eta=0.1, steps=2, runs=1, threads=1)
    simulate_batch_router(p, batch=2, eta=0.1, steps=2, runs=1, threads=1)
    simulate_topk_router(p, batch=2, eta=0.1, steps=2, runs=1, top_k=2, threads=1)
    return versions()


class LocalProcesses(Executor):
    """A pool of ``workers`` spawned processes on this machine."""

    name = "local processes"

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError("workers: must be >= 1")
        self._n = int(workers)
        ctx = multiprocessing.get_context("spawn")
        self._pool = cf.ProcessPoolExecutor(self._n, mp_context=ctx, initializer=_worker_init)

    @property
    def workers(self) -> int:
        return self._n

    def describe(self) -> str:
        return f"{self._n} local processes"

    def warm_up(self) -> None:
        """Start every process and load the kernels (the benchmark does this before timing)."""
        list(self._pool.map(_warm_sleep, range(self._n)))

    def run(self, tasks):
        futures = [self._pool.submit(run_task, t) for t in tasks]
        try:
            for f in cf.as_completed(futures):
                yield f.result()
        finally:
            for f in futures:
                f.cancel()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _warm_sleep(_):
    import time

    v = _warm()
    time.sleep(0.2)  # keep this process busy so that each warm-up call lands on another one
    return v


def _probe(address: str, timeout: float) -> None:
    """Reach ``host:port`` of a ``tcp://`` (or ``tls://``, or bare) scheduler address with a plain
    socket, the name lookup included, and (tcp) read the first byte of the scheduler's handshake,
    all within ``timeout`` seconds; :class:`ExecutorError` if that fails. Other protocols
    (``inproc://``, ``ucx://``) are left to Dask."""
    import socket
    import threading
    import time

    proto, sep, rest = address.strip().rpartition("://")
    if sep and proto not in ("tcp", "tls"):
        return
    host, colon, port = rest.rpartition(":")
    if not colon or not port.isdigit() or not host:
        return  # Dask's own message names what is missing ("missing port number")
    host = host.strip("[]")
    box: dict = {}

    def connect():
        try:
            with socket.create_connection((host, int(port)), timeout=timeout) as sock:
                if proto != "tls":
                    # a Dask listener speaks first (its handshake): a port that accepts and
                    # stays silent would keep Dask's own handshake waiting without a bound
                    sock.settimeout(max(timeout - (time.monotonic() - t0), 0.01))
                    if not sock.recv(1):
                        box["error"] = "the port closed the connection (not a Dask scheduler?)"
                        return
            box["ok"] = True
        except TimeoutError:
            pass  # reported below, as a thread still looking up the name
        except (OSError, ValueError, OverflowError) as e:
            box["error"] = getattr(e, "strerror", None) or str(e) or type(e).__name__

    # in a thread: getaddrinfo has no timeout of its own
    t0 = time.monotonic()
    th = threading.Thread(target=connect, name="moebif-probe-scheduler", daemon=True)
    th.start()
    th.join(timeout)
    if box.get("ok"):
        return
    why = box.get("error") or f"no answer within {timeout:g} s (--connect-timeout to wait longer)"
    # (proto is "" for a bare host:port, which Dask reads as tcp)
    raise ExecutorError(f"cannot connect to the scheduler at {address}: {why}")


class DaskExecutor(Executor):
    """Run the tasks as Dask futures on an existing cluster or on a new ``LocalCluster``.

    **Arguments:**

    - ``address``: scheduler address of an existing cluster, e.g. ``tcp://host:8786``.
    - ``local_workers``: start a ``LocalCluster`` of this many worker processes (one thread
      each) instead; it is closed with the executor.
    - ``client``: an existing ``distributed.Client`` to use as it is (not closed).
    - ``retries``: times a task that raised is re-run (worker deaths are handled by the
      scheduler, independently of this).
    - ``dashboard_address``: of the ``LocalCluster`` (``None``: no dashboard); the loopback
      by default, like every other service of the cluster (scheduler, workers, nannies and the
      workers' own status pages).
    - ``timeout``: seconds to reach the scheduler at ``address`` (:data:`CONNECT_TIMEOUT`).
    """

    name = "dask"

    def __init__(
        self,
        address: str | None = None,
        *,
        local_workers: int | None = None,
        client=None,
        retries: int = 2,
        dashboard_address: str | None = "127.0.0.1:8787",
        timeout: float = CONNECT_TIMEOUT,
    ):
        given = sum(x is not None for x in (address, local_workers, client))
        if given != 1:
            raise ValueError("give exactly one of address, local_workers, client")
        if address is not None:
            _probe(address, timeout)  # before importing distributed (a second or two)

        from distributed import Client, LocalCluster

        self.retries = int(retries)
        self._cluster = None
        self._own_client = client is None
        if client is not None:
            self.client = client
        elif local_workers is not None:
            if local_workers < 1:
                raise ValueError("local_workers: must be >= 1")
            # Ctrl+C is this process's business (it stops the sweep and closes the cluster):
            # worker processes started while SIGINT is ignored inherit that, and print no
            # tracebacks of their own when the terminal interrupts the whole process group
            with _sigint_ignored():
                self._cluster = LocalCluster(
                    n_workers=int(local_workers),
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",  # a local cluster listens on the loopback only
                    dashboard_address=dashboard_address,
                    worker_dashboard_address="127.0.0.1:0",
                )
            self.client = Client(self._cluster)
        else:
            try:
                self.client = Client(address, timeout=timeout)
            except Exception as e:
                # ValueError: not an address ("missing port number", unknown protocol); OSError,
                # TimeoutError: nobody answers; anything else (a MemoryError from reading a
                # length prefix): the port is not a Dask scheduler
                msg = " ".join(str(e).split())[:200] or type(e).__name__
                if isinstance(e, MemoryError):
                    msg = "the answer is not Dask's (is this a scheduler's port?)"
                raise ExecutorError(
                    f"cannot connect to the scheduler at {address}: {msg}"
                ) from None
        wanted = local_workers is None or dashboard_address is not None
        self.dashboard = self.client.dashboard_link if wanted and self._has_dashboard() else None
        try:
            self._check_workers()
        except BaseException:
            self.close()
            raise

    def _has_dashboard(self) -> bool:
        try:
            return bool(self.client.scheduler_info().get("services", {}).get("dashboard"))
        except Exception:
            return False

    @property
    def workers(self) -> int:
        return len(self.client.scheduler_info(n_workers=-1)["workers"])

    def describe(self) -> str:
        where = "LocalCluster" if self._cluster is not None else self.client.scheduler.address
        return f"dask, {self.workers} workers ({where})"

    def _check_workers(self) -> None:
        """Every connected worker must run the versions of this process (same numbers)."""
        mine = versions()
        try:
            theirs = self.client.run(versions)
        except Exception as e:
            raise ExecutorError(f"the workers cannot run moebif tasks: {e}") from None
        for addr, v in theirs.items():
            if v != mine:
                diff = ", ".join(
                    f"{k} {v.get(k)} (here {mine[k]})" for k in mine if v.get(k) != mine[k]
                )
                raise ExecutorError(f"worker {addr} runs {diff}: results would not be identical")

    def warm_up(self) -> None:
        self.client.run(_warm)

    def quiet(self) -> None:
        import logging

        logging.getLogger("distributed").setLevel(logging.CRITICAL)
        if self._cluster is None:  # someone else's cluster: leave its logging alone
            return
        with contextlib.suppress(Exception):
            self.client.run(_quiet_logs)
            self.client.run(_quiet_logs, nanny=True)

    def run(self, tasks):
        from distributed import as_completed

        tasks = list(tasks)
        if not tasks:
            return
        token = uuid.uuid4().hex[:8]
        futures = self.client.map(
            run_task,
            tasks,
            key=[f"moebif-sweep-{token}-{t.index}" for t in tasks],
            retries=self.retries,
            pure=False,
        )
        try:
            for fut, res in as_completed(futures, with_results=True):
                fut.release()
                yield res
        finally:
            self.client.cancel(futures)

    def close(self) -> None:
        if self._own_client:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()
