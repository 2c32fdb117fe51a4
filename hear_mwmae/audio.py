"""Reading users' audio files: decoded, checked, mixed to mono, resampled.

Decoders: libsndfile (`soundfile`) for the formats it reads (wav, flac, ogg / opus, mp3,
aiff, ...); PyAV (FFmpeg) for the containers it does not (m4a / mp4, aac, wma, webm, ...)
when `av` is installed (`pip install av`, or the extra `hear-mwmae[av]`). Without PyAV
those files raise `UnsupportedAudio`, whose message is the install hint.

Checks (each an `AudioError` whose message names the problem): a file of 0 bytes or 0
samples, NaN / Inf samples, and truncation: a file holding fewer frames than its header
promises ("truncated: header says 6.9 s, file holds 0.03 s"). WAV and AIFF headers are
read here, because libsndfile quietly shortens their frame count to what the file holds;
for the other formats the decoder's own count is used (exact for FLAC, with 1 % + 50 ms of
slack for the estimated counts of MP3 / Ogg and PyAV's containers).

Files are opened by Python and handed to the decoders as open files, so any name the
OS gives (spaces, unicode, bytes that are not UTF-8) decodes, and an unreadable file says
why ("permission denied"), not the decoder's "System error.". Contents no decoder
recognises are "not audio", with the first bytes shown.

Resampling uses `scipy.signal.resample_poly` (polyphase FIR) at the exact rational ratio
target / source, reduced by their gcd: (n,) -> (ceil(n * target / source),).
"""

from __future__ import annotations

import importlib.util
import math
import os
import struct
from pathlib import Path
from typing import IO, Any

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

SAMPLE_RATE = 16000
# Extensions (lower case, with the dot) of the formats this libsndfile reads, plus common aliases.
SNDFILE_SUFFIXES = frozenset("." + name.lower() for name in sf.available_formats()) | {
    ".aif", ".aifc", ".oga", ".opus", ".wave", ".snd"}
# Containers libsndfile cannot read, decoded with PyAV when it is installed.
PYAV_SUFFIXES = frozenset({".m4a", ".m4b", ".mp4", ".mov", ".aac", ".wma", ".webm", ".mka", ".mkv",
                           ".ac3", ".amr", ".3gp", ".ape", ".wv", ".mp2"}) - SNDFILE_SUFFIXES
AUDIO_SUFFIXES = SNDFILE_SUFFIXES | PYAV_SUFFIXES  # every extension treated as audio
PYAV_HINT = "pip install av (or pip install 'hear-mwmae[av]')"
_EXACT_COUNT = frozenset({"WAV", "WAVEX", "AIFF", "FLAC", "CAF", "W64", "RF64", "AU", "NIST", "IRCAM"})


class AudioError(ValueError):
    """The file holds no usable audio (empty, truncated, NaN / Inf, undecodable)."""


class UnsupportedAudio(AudioError):
    """A format no installed decoder reads; the message says what to install."""


def pyav_available() -> bool:
    return importlib.util.find_spec("av") is not None


def resample(audio: np.ndarray, sample_rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Resample along axis 0: (n, ...) -> (ceil(n * target / sample_rate), ...) float32."""
    if sample_rate == target:
        return audio.astype(np.float32, copy=False)
    g = math.gcd(int(sample_rate), int(target))
    return resample_poly(audio, int(target) // g, int(sample_rate) // g, axis=0).astype(np.float32, copy=False)


def _seconds(frames: float, sr: int) -> str:
    return f"{frames / sr:.3g} s"


def header_frames(path: str | Path | IO[bytes]) -> int | None:
    """Frames a WAV (RIFF / RIFX) or AIFF header promises, or None (other formats, streaming
    placeholders, unparsable headers). Takes a path or an open binary file (read from its start)."""
    if not isinstance(path, (str, Path)):
        path.seek(0)
        return _header_frames(path)
    with open(path, "rb") as fh:
        return _header_frames(fh)


def _header_frames(fh: IO[bytes]) -> int | None:
    head = fh.read(12)
    if len(head) < 12:
        return None
    if head[:4] in (b"RIFF", b"RIFX") and head[8:12] == b"WAVE":
        endian, aiff = ("<" if head[:4] == b"RIFF" else ">"), False
    elif head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        endian, aiff = ">", True
    else:
        return None
    block_align = None
    while len(chunk := fh.read(8)) == 8:
        cid, size = chunk[:4], struct.unpack(endian + "I", chunk[4:])[0]
        if aiff and cid == b"COMM":
            comm = fh.read(min(size, 18))
            return struct.unpack(">I", comm[2:6])[0] if len(comm) >= 6 else None
        if not aiff and cid == b"fmt ":
            fmt = fh.read(size)
            block_align = struct.unpack(endian + "H", fmt[12:14])[0] if len(fmt) >= 14 else None
            if size & 1:
                fh.seek(1, 1)
            continue
        if not aiff and cid == b"data":
            if not block_align or size in (0, 0xFFFFFFFF):
                return None
            return size // block_align
        fh.seek(size + (size & 1), 1)
    return None


def _read_sndfile(fh: IO[bytes]) -> tuple[np.ndarray, int, int | None, bool]:
    """-> ((n, channels) float32, rate, frames the file promises, whether that count is exact)."""
    fh.seek(0)
    with sf.SoundFile(fh) as f:
        sr, channels, promised, fmt = f.samplerate, f.channels, f.frames, f.format
        blocks, got = [], 0
        try:
            while (block := f.read(1 << 18, dtype="float32", always_2d=True)).shape[0]:
                blocks.append(block)
                got += block.shape[0]
        except sf.LibsndfileError as exc:  # e.g. FLAC "decoder lost sync" at the cut
            raise AudioError(f"truncated or corrupt: header says {_seconds(promised, sr)}, decoding failed "
                             f"after {_seconds(got, sr)} ({exc})") from exc
    header = header_frames(fh)
    if header is not None:
        promised = max(promised, header)
    data = np.concatenate(blocks) if blocks else np.zeros((0, channels), np.float32)
    return data, sr, promised, fmt in _EXACT_COUNT


def _read_pyav(fh: IO[bytes], suffix: str) -> tuple[np.ndarray, int, int | None, bool]:
    """Decode the first audio stream with PyAV -> ((n, channels) float32, rate, promised frames, False)."""
    if not pyav_available():
        raise UnsupportedAudio(f"unsupported format {suffix or '(no extension)'}: libsndfile cannot read it; "
                               f"to decode it with FFmpeg: {PYAV_HINT}")
    import av

    fh.seek(0)
    try:
        with av.open(fh, "r") as container:
            if not container.streams.audio:
                raise AudioError("no audio stream in the file")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp")  # planar float32, same layout and rate
            parts, sr = [], stream.codec_context.sample_rate or stream.rate
            for frame in container.decode(stream):
                parts += [out.to_ndarray() for out in resampler.resample(frame)]  # (channels, n) each
            parts += [out.to_ndarray() for out in resampler.resample(None)]
            if stream.duration is not None and stream.time_base is not None:
                promised = int(stream.duration * stream.time_base * sr)
            else:
                promised = int(container.duration * sr / 1_000_000) if container.duration else None
    except av.error.InvalidDataError as exc:
        raise AudioError(f"not audio, or corrupt: FFmpeg finds no audio it can decode in it ({_starts(fh)})") from exc
    except av.error.FFmpegError as exc:
        raise AudioError(f"unreadable: FFmpeg: {exc.strerror or exc}") from exc
    if not parts:
        return np.zeros((0, 1), np.float32), int(sr or SAMPLE_RATE), promised, False
    return np.ascontiguousarray(np.concatenate(parts, axis=1).T, dtype=np.float32), int(sr), promised, False


def _starts(fh: IO[bytes]) -> str:
    fh.seek(0)
    return f"it starts with {fh.read(12)!r}"


def decode(path: str | Path) -> tuple[np.ndarray, int, str]:
    """Decode a file -> ((n, channels) float32, sample rate, decoder name); raises AudioError."""
    path = Path(path)
    try:
        fh = open(path, "rb")
    except OSError as exc:  # permission denied, a symbolic link loop, a folder, ...
        raise AudioError(f"unreadable: {(exc.strerror or str(exc)).lower()}") from exc
    with fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise AudioError("empty file (0 bytes)")
        decoder = "pyav" if path.suffix.lower() in PYAV_SUFFIXES else "soundfile"
        try:
            data, sr, promised, exact = _read_pyav(fh, path.suffix) if decoder == "pyav" else _read_sndfile(fh)
        except sf.LibsndfileError as exc:
            if "not recognised" not in str(exc).lower():
                raise AudioError(f"unreadable: libsndfile: {exc.error_string}") from exc
            if not pyav_available():
                raise AudioError(f"not audio, or a format libsndfile does not know ({_starts(fh)}); if it is audio in "
                                 f"another container: {PYAV_HINT}") from exc
            decoder = "pyav"  # a container libsndfile does not know: let FFmpeg try
            data, sr, promised, exact = _read_pyav(fh, path.suffix)
    if promised is not None and promised > 0 and data.shape[0] > 0:
        slack = 0 if exact else 0.01 * promised + 0.05 * sr
        if promised - data.shape[0] > slack:
            raise AudioError(f"truncated: header says {_seconds(promised, sr)}, file holds "
                             f"{_seconds(data.shape[0], sr)}")
    return data, sr, decoder


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode, check, average the channels, resample. Returns ((n,) float32, facts about the file).

    Raises `AudioError` (or `UnsupportedAudio`) with a message that names the problem.
    """
    data, sr, decoder = decode(path)  # (n, channels)
    info = {"duration_s": round(data.shape[0] / sr, 6), "sample_rate": int(sr), "channels": int(data.shape[1]),
            "decoder": decoder}
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioError("empty audio (0 samples)")
    if not np.isfinite(data).all():
        raise AudioError("audio contains NaN or Inf")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return np.ascontiguousarray(resample(mono, sr, sample_rate)), info
