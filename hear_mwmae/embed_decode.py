"""Files -> decoded 16 kHz mono clips for `embed` and `tag`, in bounded memory, in worker processes.

`decode_clip(source)` reads a file a block at a time (`audio.open_audio`, mixed down and
resampled as it goes) and returns a `Clip`: its samples in memory when it is short (at most
`IN_MEMORY_SAMPLES`: 5 minutes, 19 MB), else written to a temporary file in `spill_dir` (4 bytes a
sample; the embedding then sweeps it, `embed_stream.py`). Nothing longer than a block of the
file and the in-memory limit is ever held, whatever the file claims or holds. A file that
cannot be used gives a Clip whose `error` is the reason ("error: truncated: ..."), so a
decoder running in another process never has to send an exception back.

Temporary files are named `.decoded.xxxxxxxx.tmp` (the pattern `embed_index.clean_temporary`
removes after a crash) and removed by `Clip.discard`.

`Decoder(workers).map(items, source_of)` yields (item, Clip) in the order of the items: decoded
here (`workers=0`) or by `workers` processes (fresh interpreters running `serve`: they import
numpy, scipy and the decoders, never torch, and never re-run the caller's main module), with at
most `prefetch` (2 x workers) clips asked for ahead of the consumer: that, plus one finished
clip waiting per worker, times the in-memory limit, bounds the memory decoded clips can hold. A
decoder process that dies (a crash in a codec on a hostile file) costs no other file: the file
it was decoding is an error ("the decoder crashed"), the process is replaced and the rest is
decoded again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np

from .audio import mono_blocks, open_audio
from .out_folder import temporary_name

log = logging.getLogger(__name__)
T = TypeVar("T")
Source = Any  # what `audio.open_audio` opens: a path, or (a name, the bytes of a file)

IN_MEMORY_SAMPLES = 16000 * 300  # a clip longer than 5 min of 16 kHz audio goes to a temporary file
READ_BLOCK = 1 << 18  # samples read back from a temporary file at a time


def failure_reason(exc: BaseException) -> str:
    """The index status of a file that could not be decoded or embedded: one line."""
    reason = f"error: {exc}" if isinstance(exc, ValueError) else f"error: {type(exc).__name__}: {exc}"
    return " ".join(reason.split())


@dataclass
class Clip:
    """One decoded file: (n,) float32 at 16 kHz in `samples`, or in the file `spill`; `info` the
    decoder's facts (duration_s, sample_rate, channels, decoder); `error` instead when unusable."""

    samples: np.ndarray | None = None
    spill: str | None = None
    num_samples: int = 0
    wave_sum: float = 0.0  # float64 sum of the samples (a frontend that removes the clip mean needs it)
    peak: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def wave_mean(self) -> float:
        return self.wave_sum / max(self.num_samples, 1)

    def blocks(self, size: int = READ_BLOCK) -> Iterator[np.ndarray]:
        """The samples, (m,) float32 blocks, from memory or read back from the temporary file."""
        if self.samples is not None:
            yield self.samples
            return
        with open(self.spill, "rb") as fh:
            while True:
                block = np.empty(size, np.float32)
                got = fh.readinto(block)
                if not got:
                    return
                yield block[:got // 4]

    def discard(self) -> None:
        """Remove the temporary file, if any."""
        if self.spill is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.spill)
            self.spill = None


def decode_clip(source: Source, spill_dir: str | Path | None = None, max_duration: float | None = None,
                in_memory: int | None = None) -> Clip:
    """Decode `source` (see the module docstring). Without `spill_dir` every clip stays in memory."""
    limit = IN_MEMORY_SAMPLES if in_memory is None else in_memory
    clip, blocks, spill = Clip(), [], None
    try:
        with open_audio(source, max_duration) as stream:
            for block in mono_blocks(stream):
                clip.num_samples += block.shape[0]
                clip.wave_sum += float(block.sum(dtype=np.float64))
                clip.peak = max(clip.peak, float(np.abs(block).max()))
                if spill is None and spill_dir is not None and clip.num_samples > limit:
                    clip.spill, spill = _open_spill(spill_dir)
                    for held in blocks:
                        spill.write(held.tobytes())
                    blocks = []
                if spill is not None:
                    spill.write(np.ascontiguousarray(block, np.float32).tobytes())
                else:
                    blocks.append(block)
            clip.info = stream.facts()
        if spill is not None:
            spill.close()
        else:
            clip.samples = np.ascontiguousarray(np.concatenate(blocks) if len(blocks) > 1 else blocks[0], np.float32)
    except Exception as exc:  # decoders raise several types for unusable files
        if spill is not None:
            spill.close()
        clip.discard()
        return Clip(error=failure_reason(exc), info=clip.info)
    return clip


def _open_spill(folder: str | Path) -> tuple[str, Any]:
    """(path, binary handle) of a new temporary file in `folder` (created exclusively, never through a link)."""
    for _ in range(100):
        path = os.path.join(os.fspath(folder), temporary_name("decoded"))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except FileExistsError:
            continue
        return path, os.fdopen(fd, "wb")
    raise FileExistsError(f"no free temporary file name in {folder}")


def default_workers(files: int, ranks_here: int = 1, on_cpu: bool = True) -> int:
    """Decoding processes when none are asked for; none for fewer than 8 files (starting a
    process costs about a second).

    With the model on an accelerator: one per core this process may use (the cores shared by the
    ranks on this machine), at most 8. With the model on the CPU the decoders take cores from the
    model, which costs more per audio second than decoding (on 2 Xeon cores the 1.8 M-parameter
    demo model costs 3.6x the decoding of 44.1 kHz stereo FLAC, a base model over 20x): a quarter
    of the cores, so none below 4 (measured on 2 cores: 2 workers ran at 0.72-0.82x of none).
    """
    if files < 8:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = max(1, cores // max(1, ranks_here))
    return min(8, cores // 4) if on_cpu else min(8, cores)


CRASHED = "error: the decoder crashed on this file (its process died)"
_BOOT = "from hear_mwmae.embed_decode import serve; serve()"


def serve() -> None:
    """A decoding process: (source, spill_dir, max_duration) requests in on stdin, Clips out, both
    pickled, one at a time, until stdin closes. The protocol has stdout to itself (anything a
    decoder prints goes to stderr); Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    while True:
        try:
            source, spill_dir, max_duration = pickle.load(requests)
        except EOFError:
            return
        pickle.dump(decode_clip(source, spill_dir, max_duration), replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()


class _Worker:
    """One decoding process; `pending` counts the requests it has not answered yet."""

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parents[1])  # this copy of hear_mwmae, whatever sys.path says
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root,
                                                                         os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen([sys.executable, "-c", _BOOT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env)
        self.pending = 0

    def send(self, request: tuple) -> None:
        pickle.dump(request, self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.flush()
        self.pending += 1

    def receive(self) -> Clip | None:
        """The answer to the oldest request; None when the process died on it."""
        try:
            clip = pickle.load(self.proc.stdout)
        except (EOFError, pickle.UnpicklingError, OSError):
            return None
        self.pending -= 1
        return clip

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


class Decoder:
    """Clips in the order of their items, decoded here or in worker processes (module docstring).

    Item i goes to worker i % workers; each worker answers in the order it was asked, so the
    clips come back in order, and a worker that dies dies on the oldest request it had not
    answered: that file is "the decoder crashed", the worker is replaced and asked the rest again.
    """

    def __init__(self, workers: int = 0, spill_dir: str | Path | None = None, max_duration: float | None = None,
                 prefetch: int | None = None) -> None:
        self.workers = max(0, int(workers))
        self.spill_dir = None if spill_dir is None else os.fspath(spill_dir)
        self.max_duration = max_duration
        self.prefetch = max(prefetch or 2 * self.workers, self.workers)
        self._pool: list[_Worker] = []

    def map(self, items: Iterable[T], source_of: Callable[[T], Source]) -> Iterator[tuple[T, Clip]]:
        if not self.workers:
            for item in items:
                yield item, decode_clip(source_of(item), self.spill_dir, self.max_duration)
            return
        if not self._pool:
            self._pool = [_Worker() for _ in range(self.workers)]
        ahead: deque[tuple[T, int, tuple]] = deque()  # (item, worker, request) asked and not yet received
        todo, sent = iter(items), 0
        try:
            while True:
                while len(ahead) < self.prefetch and (item := next(todo, _END)) is not _END:
                    request = (source_of(item), self.spill_dir, self.max_duration)
                    w = sent % self.workers
                    self._pool[w].send(request)
                    ahead.append((item, w, request))
                    sent += 1
                if not ahead:
                    return
                item, w, _ = ahead.popleft()
                clip = self._pool[w].receive()
                if clip is None:
                    clip = Clip(error=CRASHED)
                    self._replace(w, [r for _, v, r in ahead if v == w])
                yield item, clip
        finally:
            for _, w, _ in ahead:  # the consumer stopped early: collect and drop what was decoded ahead
                answer = self._pool[w].receive() if self._pool else None
                if answer is not None:
                    answer.discard()

    def _replace(self, w: int, requests: list[tuple]) -> None:
        log.warning("a decoding process died; it is replaced and %d file(s) it held are decoded again",
                    len(requests))
        self._pool[w].stop()
        self._pool[w] = _Worker()
        for request in requests:
            self._pool[w].send(request)

    def close(self) -> None:
        for worker in self._pool:
            worker.stop()
        self._pool = []

    def __enter__(self) -> "Decoder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_END = object()


__all__ = ["CRASHED", "IN_MEMORY_SAMPLES", "Clip", "Decoder", "decode_clip", "default_workers", "failure_reason"]
