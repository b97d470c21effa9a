"""The request queue in front of the one pipeline: a single worker thread owns the pipeline, and concurrent requests
whose settings agree run as one batched pipeline call.

A request becomes a `Job` of rows, one row per image, each with its own prompt, negative prompt and seeds (image k
of a request seeded s uses s + k). Rows go into the queue in `Part`s of at most one call's capacity. When the worker
is free it takes the oldest part and, until the call is full or that part has waited `max_wait` seconds, the later
parts with the same `BatchKey` (settings and adapters), and runs them as one call of a list of prompts. An image's
pixels come from its own seeds, so they do not depend on who shared its call (to 1/255: CPU kernels round by batch
shape). Anything else that needs the pipeline (interrogation, a model switch) is a task that runs alone, in order.

Progress and cancellation are per job: the step callback updates every job of the call, a cancelled job's answer is
given at once, and the call itself stops early only when every job in it is cancelled.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

from ..errors import Interrupted, UserError

log = logging.getLogger("imagegen.serve")


class Busy(Exception):
    """No room for the work: the queue is full (429), or the server is shutting down or has no model (503)."""

    def __init__(self, message: str, status: int = 429):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class BatchKey:
    """What the rows of one pipeline call must share."""

    prior: object  # PriorSettings
    decoder: object  # DecoderSettings
    loras: tuple = ()  # the adapters the prompts' <lora:...> tags ask for, as (name, weights, window) in order


@dataclass(frozen=True)
class Row:
    prompt: str  # as given, <lora:...> tags included
    negative: str
    seed: int
    prior_seed: int


@dataclass
class JobResult:
    images: list
    records: list


class Job:
    """One request's images: resolved once all its parts are made, or at once when it is cancelled."""

    def __init__(self, key: BatchKey, rows: list[Row], origin: str):
        self.key, self.rows, self.origin = key, rows, origin
        self.future: Future = Future()
        self.cancelled = threading.Event()
        self.submitted = time.monotonic()
        self._images, self._records = [None] * len(rows), [None] * len(rows)
        self._parts_left = 0
        self._sizes: list[tuple[int, int]] = []  # (offset, rows) of each part
        self._part_fractions: dict[int, float] = {}  # part offset -> fraction done

    @property
    def progress(self) -> float:
        if self.future.done() and not self.cancelled.is_set():
            return 1.0
        done = sum(self._part_fractions.get(offset, 0.0) * size for offset, size in self._sizes)
        return done / max(1, len(self.rows))

    def cancel(self, reason: str = "interrupted") -> None:
        self.cancelled.set()
        if not self.future.done():
            self.future.set_exception(Interrupted(reason))

    def _fail(self, err: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(err)

    def _note(self, part: "Part", fraction: float) -> None:
        self._part_fractions[part.offset] = fraction

    def _finish_part(self, part: "Part", images: list, records: list) -> None:
        self._part_fractions[part.offset] = 1.0
        for i, (image, record) in enumerate(zip(images, records)):
            index = part.offset + i
            self._images[index] = image
            # The record describes this request, not the shared call: --from-png makes it again as this request.
            self._records[index] = replace(record, batch_size=len(self.rows), batch_index=index)
        self._parts_left -= 1
        if self._parts_left == 0 and not self.future.done():
            self.future.set_result(JobResult(self._images, self._records))


@dataclass
class Part:
    job: Job
    offset: int  # of its first row in the job
    rows: list

    @property
    def key(self) -> BatchKey:
        return self.job.key


@dataclass
class Task:
    run: object  # callable(pipe) -> value, run on the worker thread
    future: Future = field(default_factory=Future)


@dataclass
class Stats:
    calls: int = 0  # pipeline calls made
    images: int = 0
    largest_batch: int = 0
    jobs: int = 0  # jobs submitted
    failed_calls: int = 0


class Batcher:
    def __init__(self, load, max_batch: int = 8, max_wait: float = 0.05, max_queue: int = 256):
        """`load()` makes the pipeline; it runs on the worker thread, which owns the pipeline from then on."""
        self._load, self.max_batch, self.max_wait, self.max_queue = load, max_batch, max_wait, max_queue
        self.pipe = None
        self.load_error: str | None = None
        self.ready = threading.Event()  # set once loading has finished, well or not
        self.stats = Stats()
        self._queue: list = []  # Parts and Tasks in the order they came
        self._cond = threading.Condition()
        self._running: list[Part] = []
        self._step = ("", 0, 0)  # (stage, step, steps) of the call in progress
        self._call_started = 0.0
        self._call_fraction = 0.0
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="imagegen-pipeline", daemon=True)

    # ---------------------------------------------------------------- the callers' side
    def start(self) -> None:
        self._thread.start()

    def capacity(self, key: BatchKey) -> int:
        """Images per call for these settings: --max-batch, and no more than the model's per-call pixel limit."""
        limits = self.pipe.limits
        return max(1, min(self.max_batch, limits.max_call_pixels // (key.decoder.width * key.decoder.height)))

    def submit(self, key: BatchKey, rows: list[Row], origin: str = "") -> Job:
        job = Job(key, rows, origin)
        size = self.capacity(key)
        parts = [Part(job, offset, rows[offset:offset + size]) for offset in range(0, len(rows), size)]
        job._parts_left, job._sizes = len(parts), [(p.offset, len(p.rows)) for p in parts]
        with self._cond:
            if self._closing:
                raise Busy("the server is shutting down", 503)
            if self.pending_jobs() >= self.max_queue:
                raise Busy(f"{self.max_queue} requests are already waiting; try again shortly")
            self._queue += parts
            self.stats.jobs += 1
            self._cond.notify_all()
        job.future.add_done_callback(lambda f: self._forget(job) if job.cancelled.is_set() else None)
        return job

    def run_exclusive(self, run) -> Future:
        """`run(pipe)` on the worker thread, alone and in queue order; its Future holds the value or the error."""
        task = Task(run)
        with self._cond:
            if self._closing:
                raise Busy("the server is shutting down", 503)
            self._queue.append(task)
            self._cond.notify_all()
        return task.future

    def _forget(self, job: Job) -> None:
        with self._cond:
            self._queue = [item for item in self._queue if not (isinstance(item, Part) and item.job is job)]
            self._cond.notify_all()

    def pending_jobs(self) -> int:
        jobs = {id(item.job) for item in self._queue if isinstance(item, Part)}
        jobs |= {id(part.job) for part in self._running}
        return len(jobs)

    def running_jobs(self) -> list[Job]:
        return list({id(p.job): p.job for p in self._running}.values())

    def state(self) -> dict:
        """What AUTOMATIC1111's /progress shows: the call in progress and how many requests wait."""
        running = bool(self._running)
        stage, step, steps = self._step if running else ("", 0, 0)
        fraction = self._call_fraction if running else 0.0
        elapsed = time.monotonic() - self._call_started if running else 0.0
        eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
        return {"running": running, "stage": stage, "step": step, "steps": steps, "progress": fraction,
                "eta": eta, "jobs": self.pending_jobs(), "queued": len(self._queue)}

    def close(self, timeout: float) -> None:
        """Take no more work, finish what is queued within `timeout` seconds, then cancel the rest."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout)
        with self._cond:
            left, self._queue = self._queue, []
        for item in left:
            (item.job.cancel("the server shut down") if isinstance(item, Part)
             else item.future.set_exception(Busy("the server shut down", 503)))
        for job in self.running_jobs():
            job.cancel("the server shut down")

    # ---------------------------------------------------------------- the worker thread
    def _work(self) -> None:
        try:
            self.pipe = self._load()
        except Exception as err:  # reported by /health; every request is refused with it
            log.exception("cannot load the model")
            self.load_error = str(err).splitlines()[0] if str(err) else type(err).__name__
        finally:
            self.ready.set()
        while True:
            item = self._next()
            if item is None:
                return
            if isinstance(item, Task):
                self._run_task(item)
            else:
                try:
                    self._run_call(item)
                finally:
                    with self._cond:
                        self._running = []

    def _run_task(self, task: Task) -> None:
        if not task.future.set_running_or_notify_cancel():
            return
        try:
            task.future.set_result(task.run(self.pipe))
        except BaseException as err:  # noqa: BLE001  (the caller gets every error)
            task.future.set_exception(err)

    def _next(self):
        """The next task, or the parts of the next call; None once closed and empty."""
        with self._cond:
            while True:
                self._queue = [i for i in self._queue if not (isinstance(i, Part) and i.job.future.done())]
                if not self._queue:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                head = self._queue[0]
                if isinstance(head, Task):
                    return self._queue.pop(0)
                if self.load_error is not None:
                    head.job._fail(Busy(f"the model could not be loaded: {self.load_error}", 503))
                    continue
                parts = self._companions(head)
                full = sum(len(p.rows) for p in parts) >= self.capacity(head.key)
                wait = head.job.submitted + self.max_wait - time.monotonic()
                if full or wait <= 0 or self._closing:
                    taken = {id(p) for p in parts}
                    self._queue = [i for i in self._queue if id(i) not in taken]
                    self._running = parts
                    return parts
                self._cond.wait(wait)

    def _companions(self, head: Part) -> list[Part]:
        """The head and the later parts that can share its call, up to a task that must run first."""
        size, parts, rows = self.capacity(head.key), [], 0
        for item in self._queue:
            if isinstance(item, Task):
                break
            if item.key == head.key and rows + len(item.rows) <= size:
                parts.append(item)
                rows += len(item.rows)
        return parts

    def _run_call(self, parts: list[Part]) -> None:
        key = parts[0].key
        rows = [row for part in parts for row in part.rows]
        expected = key.prior.steps + key.decoder.steps
        interrupt = threading.Event()
        steps = 0
        self._call_started, self._call_fraction, self._step = time.monotonic(), 0.0, ("prior", 0, key.prior.steps)

        def on_step(info) -> None:
            nonlocal steps
            steps += 1
            self._step = (info.stage, info.index + 1, info.total)
            self._call_fraction = min(1.0, steps / expected)
            for part in parts:
                part.job._note(part, self._call_fraction)
            if all(part.job.cancelled.is_set() for part in parts):
                interrupt.set()  # nobody waits for this call any more

        try:
            result = self.pipe([r.prompt for r in rows], negative_prompt=[r.negative for r in rows], num_images=1,
                               seed=[r.seed for r in rows], prior_seed=[r.prior_seed for r in rows], loras=[],
                               prior=key.prior, decoder=key.decoder, progress=False, callback_on_step_end=on_step,
                               interrupt=interrupt)
        except Interrupted as err:
            for part in parts:
                part.job.cancel(str(err))
            return
        except Exception as err:  # noqa: BLE001
            self.stats.failed_calls += 1
            if len(parts) > 1:  # one request's trouble must not fail its companions: each again, alone
                for part in parts:
                    if not part.job.future.done():
                        self._run_call([part])
                return
            if not isinstance(err, UserError):
                log.exception("generation failed")
            parts[0].job._fail(err)
            return
        self.stats.calls += 1
        self.stats.images += len(rows)
        self.stats.largest_batch = max(self.stats.largest_batch, len(rows))
        start = 0
        for part in parts:
            end = start + len(part.rows)
            part.job._finish_part(part, result.images[start:end], result.records[start:end])
            start = end
