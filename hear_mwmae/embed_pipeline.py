"""One rank's share of `embed`: decide, decode, batch, embed, write — each stage overlapping the next.

    jobs ─ decide (reuse / why redo) ─▶ Decoder: `workers` processes decode, mix and resample,
    at most 2 x workers clips ahead, in job order ─▶ plan_batches: consecutive clips up to
    4 x max_chunks_per_batch chunks (a long clip alone) ─▶ embed_clips / embed_long on the
    device ─▶ Writer thread: index records and the store's writes, a bounded queue ahead

Everything happens in job order and each batch is made of consecutive jobs, so the batches and
therefore the outputs are the same whatever the number of workers and however fast each file
decodes. Memory: the decoders' look-ahead (2 x workers clips of at most 5 minutes, plus one
finished clip per worker), one batch (its audio, spectrogram and encoder activations), and the
writer's queue (`WRITE_QUEUE` results); nothing grows with the corpus.

Every job ends in exactly one record: reused (its "ok" record stays), "ok", or "error: ..." —
records are appended by the writer thread alone, in order, a "pending" record before any output
is written (see embed_index.py).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .embed_batch import clip_chunks, embed_clips, plan_batches
from .embed_decode import Clip, Decoder, failure_reason
from .embed_index import PENDING, Index, delete_outputs, input_facts, outputs_of, redo_reason
from .embed_plan import Job
from .embed_store import Result, Store, StoreError
from .embed_stream import Rows, embed_long
from .runtime import LOUD_AUDIO

log = logging.getLogger(__name__)

T = TypeVar("T")

WRITE_QUEUE = 64  # results waiting for the writer thread at most
BATCH_CHUNKS = 4  # a device batch holds up to this many micro-batches' worth of chunks


@dataclass
class Summary:
    """What a run did: files embedded, reused (already done), failed, not audio and removed (input, reason)."""

    embedded: int = 0
    reused: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    not_audio: list[tuple[str, str]] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)

    def merge(self, other: "Summary") -> "Summary":
        return Summary(self.embedded + other.embedded, self.reused + other.reused, self.failed + other.failed,
                       self.not_audio + other.not_audio, self.removed + other.removed)


def check_finite(emb: np.ndarray | Rows, peak: float) -> None:
    """Raise ValueError when an embedding holds NaN or Inf (extreme audio overflows the frontend)."""
    finite = emb.finite if isinstance(emb, Rows) else bool(np.isfinite(emb).all())
    if not finite:
        loud = f"; the audio peaks at {peak:.3g}" if peak > 1 else ""
        raise ValueError(f"the embedding is not finite (NaN or Inf){loud}")


class Writer:
    """A thread that runs submitted calls in order, so disk writes overlap the next batch's compute.
    The queue is bounded (the loop waits when the disk falls behind). Whatever a call raises —
    KeyboardInterrupt, as a kill would, included — stops the thread and is raised again in the
    submitting thread at its next `submit` or at `close`: nothing after it is written."""

    def __init__(self, size: int = WRITE_QUEUE) -> None:
        self.tasks: queue.Queue = queue.Queue(size)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="embed-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (task := self.tasks.get()) is not None:
            if self.error is None:
                try:
                    task()
                except BaseException as exc:  # noqa: BLE001 - handed to the submitting thread
                    self.error = exc

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def submit(self, task: Callable[[], None]) -> None:
        self._raise()
        self.tasks.put(task)

    def close(self) -> None:
        self.tasks.put(None)
        self.thread.join()
        self._raise()


def job_facts(job: Job, hash_inputs: bool) -> dict[str, Any]:
    """What identifies the job's input (a dataset row brings its own: `job.facts()`)."""
    facts = getattr(job, "facts", None)
    return facts() if callable(facts) else input_facts(job.source, hash_inputs)


def job_source(job: Job) -> Any:
    """What the decoder opens: the file, or what a dataset row holds (`job.read()`: a path or (name, bytes))."""
    read = getattr(job, "read", None)
    return read() if callable(read) else job.source


def embed_share(runtime: torch.nn.Module, jobs: list[Job], index: Index, store: Store, settings: dict[str, Any], *,
                mode: str, overwrite: bool, hash_inputs: bool, problems: list[tuple[str, str]],
                not_audio: list[tuple[str, str]], progress: bool | None, show: bool, workers: int = 0,
                max_duration: float | None = None) -> Summary:
    """This rank's part of `embed.embed_files`: reuse what is valid, embed the rest, record everything."""
    summary = Summary(not_audio=list(not_audio))
    folder = index.folder

    def unusable(item: str, record: dict[str, Any]) -> None:
        """An input that yields no embedding: earlier outputs of it would be stale, so they go."""
        previous = index.records.get(item)
        if previous:
            delete_outputs(folder, outputs_of(previous))
        index.add(record)

    for item, reason in problems:
        log.error("%s: %s", item, reason)
        summary.failed.append((item, reason))
        unusable(item, {"input": item, "output": None, "timestamps": None, "status": reason, **settings})
    for item, reason in not_audio:
        unusable(item, {"input": item, "output": None, "timestamps": None, "status": reason})

    bar = tqdm(total=len(jobs), unit="file", desc="embed", disable=(None if progress is None else not progress)
               if show else True)

    def record(job: Job, status: str, extra: dict[str, Any], names: tuple[str | None, str | None],
               **fields: Any) -> None:
        index.add({"input": str(job.source), "output": names[0], "timestamps": names[1], "status": status,
                   **extra, **fields, **settings})

    def failed(job: Job, reason: str, extra: dict[str, Any]) -> None:
        """(writer thread) An input that failed: its earlier outputs go, its record says why."""
        log.error("%s: %s", job.source, reason)
        summary.failed.append((str(job.source), reason))
        if store.format == "npy":  # its own names too: stale, or half of a pair
            delete_outputs(folder, [p.as_posix() for p in job.outputs])
        unusable(str(job.source), {"input": str(job.source), "output": None, "timestamps": None, "status": reason,
                                   **extra, **settings})
        bar.update(1)

    def done(result: Result) -> None:
        summary.embedded += 1
        steps = {"steps": int(result.stamps.shape[0])} if mode == "timestamp" else {}
        record(result.job, "ok", result.extra, result.names, dim=int(result.emb.shape[-1]), **steps)
        bar.update(1)

    def lost(exc: StoreError) -> None:
        """(writer thread) Every result a failed write took with it is recorded as failed."""
        for result in exc.results:
            failed(result.job, failure_reason(exc.__cause__ or exc), result.extra)

    def write(result: Result, peak: float) -> None:
        """(writer thread) An embedded input: checked, recorded as pending, written, recorded as ok."""
        try:
            check_finite(result.emb, peak)
            result.names = store.names(result)
            record(result.job, PENDING, {}, result.names)  # from here on, an output on disk has a record
            finished = store.put(result)
        except StoreError as exc:
            return lost(exc)
        except Exception as exc:
            result.release()
            return failed(result.job, failure_reason(exc), result.extra)
        for r in finished:
            done(r)

    def close_store() -> None:
        try:
            finished = store.close()
        except StoreError as exc:
            return lost(exc)
        for r in finished:
            done(r)

    todo: list[tuple[Job, dict[str, Any]]] = []
    redo = Counter()
    for job in jobs:
        try:
            facts = job_facts(job, hash_inputs)
        except OSError as exc:
            failed(job, failure_reason(exc), {})
            continue
        reason = "--overwrite" if overwrite else redo_reason(index.records.get(str(job.source)), settings, facts,
                                                            lambda r, job=job: store.missing(r, job))
        if reason is None:
            summary.reused += 1
            bar.update(1)
        else:
            todo.append((job, {"reason": reason, **facts}))
            redo[reason.split(":")[0]] += 1
    if summary.reused:
        log.info("reusing %d file(s) already embedded with these settings (--overwrite redoes them)", summary.reused)
    if set(redo) - {"new"}:
        log.info("re-embedding: %s", ", ".join(f"{n} {why}" for why, n in redo.items() if why != "new"))

    decoder = Decoder(workers, folder.root, max_duration)
    writer = Writer()
    scene_only = mode == "scene"
    try:
        with logging_redirect_tqdm(), bar:
            clips = decoder.map(todo, lambda item: job_source(item[0]))
            ready = (c for c in clips if _usable(c, writer, failed))
            for (job, extra), clip, emb, stamps, error in embed_decoded(runtime, ready, scene_only):
                extra = {**extra, **clip.info, **_loudness(job, clip)}
                if error is not None:
                    writer.submit(lambda job=job, error=error, extra=extra: failed(job, error, extra))
                else:
                    result = Result(job, extra, emb, stamps)
                    writer.submit(lambda result=result, peak=clip.peak: write(result, peak))
            writer.submit(close_store)
            writer.close()
    finally:
        decoder.close()
        if writer.thread.is_alive():  # interrupted: let the writer finish what it took, then stop
            writer.tasks.put(None)
            writer.thread.join()
        index.close()
    return summary


def _usable(item: tuple[tuple[Job, dict[str, Any]], Clip], writer: Writer,
            failed: Callable[[Job, str, dict[str, Any]], None]) -> bool:
    """A decoded item goes on to the device; one that could not be decoded is recorded as failed."""
    (job, extra), clip = item
    if clip.error is None:
        return True
    writer.submit(lambda: failed(job, clip.error, {**extra, **clip.info}))
    return False


def _loudness(job: Job, clip: Clip) -> dict[str, Any]:
    if clip.peak > LOUD_AUDIO:
        log.warning("%s: peak %.3g is far outside [-1, 1]; embedded as it is (is it scaled as int16?)",
                    job.source, clip.peak)
        return {"warning": f"peak {clip.peak:.3g} far outside [-1, 1]"}
    return {}


def embed_decoded(runtime: torch.nn.Module, items: Iterable[tuple[T, Clip]], scene_only: bool,
                  ) -> Iterator[tuple[T, Clip, Any, np.ndarray | None, str | None]]:
    """(item, decoded clip) pairs, in order -> (item, clip, emb, stamps, error or None), in order:
    consecutive clips embedded together in device batches of up to BATCH_CHUNKS micro-batches of
    chunks, a clip held in a temporary file (long) swept on its own (`embed_long`)."""
    budget = BATCH_CHUNKS * runtime.max_chunks_per_batch
    for batch in plan_batches(items, lambda c: None if c[1].spill else clip_chunks(runtime, c[1].num_samples),
                              budget):
        yield from _embed_batch(runtime, batch, scene_only)


def _embed_batch(runtime: torch.nn.Module, batch: list, scene_only: bool) -> list[tuple]:
    """[((job, extra), clip)] -> [((job, extra), clip, emb, stamps, error or None)]. A batch that fails
    is retried one clip at a time, so that one bad file cannot sink the others."""
    if len(batch) == 1 and batch[0][1].spill is not None:  # a long clip: swept from its temporary file
        item, clip = batch[0]
        try:
            emb, stamps = embed_long(runtime, clip.blocks, clip.num_samples, clip.wave_mean, scene_only)
            return [(item, clip, emb, stamps, None)]
        except Exception as exc:
            return [(item, clip, None, None, failure_reason(exc))]
        finally:
            clip.discard()
    try:
        results = embed_clips(runtime, [clip.samples for _, clip in batch], scene_only)
        return [(item, clip, emb, stamps, None) for (item, clip), (emb, stamps) in zip(batch, results)]
    except Exception as exc:
        if len(batch) > 1:
            log.warning("a batch of %d files failed (%s); embedding them one by one", len(batch), exc)
            return [row for one in batch for row in _embed_batch(runtime, [one], scene_only)]
        item, clip = batch[0]
        return [(item, clip, None, None, failure_reason(exc))]


__all__ = ["Summary", "Writer", "check_finite", "embed_decoded", "embed_share", "job_facts", "job_source"]
