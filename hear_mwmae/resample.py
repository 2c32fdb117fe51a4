"""Rational resampling to 16 kHz: a whole clip, or a stream of blocks with the same result.

`resample(x, sr)` is `scipy.signal.resample_poly` at the exact ratio target / sr reduced by
their gcd: (n,) -> (ceil(n * up / down),) float32 (a polyphase FIR: a Kaiser-windowed sinc of
20 * max(up, down) + 1 taps, applied by `scipy.signal.upfirdn`).

`StreamResampler` computes the same output a block at a time, so a clip of any length is
resampled in memory bounded by its block size: output sample k of `upfirdn` depends only on
the input samples i with k * down - taps < i * up <= k * down, so each block's outputs come
from `upfirdn` over the samples they need, taken from an input index that is a multiple of
`down` (where the up-sampled grid and the output grid meet). Every output is the same sum of
the same products as in the whole-clip call: the two agree bit for bit (tests/test_embed_stream.py).

`check_rate` refuses rates whose reduced ratio would need an enormous filter (a file claiming
767999 Hz: 15 million taps) and rates outside what audio files hold.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import firwin, upfirdn

SAMPLE_RATE = 16000
MIN_RATE, MAX_RATE = 1000, 768_000  # Hz an input may have (telephone speech at 8 kHz ... DXD / 768 kHz)
MAX_RATIO_TERM = 100_000  # max(up, down) after reducing: a filter of at most 2 000 001 taps (8 MB)


def ratio(sample_rate: int, target: int = SAMPLE_RATE) -> tuple[int, int]:
    """(up, down): target / sample_rate reduced by their gcd."""
    g = math.gcd(int(sample_rate), int(target))
    return int(target) // g, int(sample_rate) // g


def check_rate(sample_rate: int, target: int = SAMPLE_RATE) -> None:
    """Raise ValueError, saying why, for a sample rate this package does not resample."""
    if not MIN_RATE <= sample_rate <= MAX_RATE:
        raise ValueError(f"sample rate {sample_rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz")
    up, down = ratio(sample_rate, target)
    if max(up, down) > MAX_RATIO_TERM:
        raise ValueError(f"sample rate {sample_rate} Hz: the ratio {up}/{down} to {target} Hz does not reduce "
                         f"(its resampling filter would have {20 * max(up, down) + 1} taps)")


def resample(audio: np.ndarray, sample_rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Resample along axis 0: (n, ...) -> (ceil(n * target / sample_rate), ...) float32."""
    if sample_rate == target:
        return audio.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    up, down = ratio(sample_rate, target)
    return resample_poly(audio, up, down, axis=0).astype(np.float32, copy=False)


class StreamResampler:
    """`resample` of a 1-D float32 signal given as consecutive blocks.

        r = StreamResampler(44100)
        out = [r.push(block) for block in blocks] + [r.finish()]   # == resample(concat(blocks), 44100)

    Holds at most one block plus the filter's reach (taps / up input samples).
    """

    def __init__(self, sample_rate: int, target: int = SAMPLE_RATE) -> None:
        self.up, self.down = ratio(sample_rate, target)
        self.identity = self.up == self.down == 1
        if self.identity:
            return
        up, down = self.up, self.down
        half_len = 10 * max(up, down)  # as scipy.signal.resample_poly designs it
        h = firwin(2 * half_len + 1, 1.0 / max(up, down), window=("kaiser", 5.0)).astype(np.float32)
        h *= up
        self.pre_remove = (half_len + down - half_len % down) // down  # outputs of the leading pad, dropped
        pre_pad = down - half_len % down
        self.taps = np.concatenate([np.zeros(pre_pad, np.float32), h])
        self.buffer = np.zeros(0, np.float32)
        self.start = 0  # input index of buffer[0]; always a multiple of `down`
        self.received = 0  # input samples pushed so far
        self.next_out = self.pre_remove  # index of the next output of upfirdn over the whole signal

    def _outputs(self, last: int) -> np.ndarray:
        """upfirdn outputs next_out .. last (inclusive) from the buffer; then drop what no later output needs."""
        if last < self.next_out:
            return np.zeros(0, np.float32)
        y = upfirdn(self.taps, self.buffer, self.up, self.down)
        first = self.start // self.down * self.up  # the global output index of y[0]
        out = y[self.next_out - first:last + 1 - first]
        self.next_out = last + 1
        need = max(0, -(-(self.next_out * self.down - len(self.taps) + 1) // self.up))  # first input still needed
        drop = min(need // self.down * self.down, self.received - self.received % self.down) - self.start
        if drop > 0:
            self.buffer = self.buffer[drop:]
            self.start += drop
        return out.astype(np.float32, copy=False)

    def push(self, block: np.ndarray) -> np.ndarray:
        """Append (m,) samples; returns the outputs they complete (any length, maybe 0)."""
        block = np.asarray(block, np.float32)
        if self.identity:
            return block
        self.buffer = np.concatenate([self.buffer, block])
        self.received += block.shape[0]
        if not self.received:
            return np.zeros(0, np.float32)
        return self._outputs((self.received - 1) * self.up // self.down)  # inputs beyond: not needed yet

    def finish(self) -> np.ndarray:
        """The outputs after the last sample (the filter's tail); ceil(n * up / down) in all."""
        if self.identity or not self.received:
            return np.zeros(0, np.float32)
        total = -(-self.received * self.up // self.down)
        return self._outputs(self.pre_remove + total - 1)


__all__ = ["MAX_RATE", "MIN_RATE", "SAMPLE_RATE", "StreamResampler", "check_rate", "ratio", "resample"]
