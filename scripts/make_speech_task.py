"""A small speaker-independent keyword task from synthesised speech, in HEAR 2021's task format.

    python scripts/make_speech_task.py /work/data/speech_task            # ~700 clips, under a minute
    python scripts/make_speech_task.py OUT_DIR --clips-per-word 70 --seed 0 --engines espeak-ng,flite

Needs the speech synthesisers from apt: `apt-get install espeak-ng flite` (flite only when
--engines names it). Writes OUT_DIR/tts_keywords/ as heareval lays out a scene task:
task_metadata.json (scene, multiclass, trainvaltest, top1_acc, sample_duration 1.0),
labelvocabulary.csv (idx,label), train.json / valid.json / test.json ({file: [word]}),
16000/<split>/<word>_<voice>.wav (mono, 16 kHz, PCM 16), and voices.json (who is who).

Content: the ten Speech Commands core words ("yes no up down left right on off stop go"),
each said once by every voice, so --clips-per-word is also the number of voices. A voice is
an espeak-ng English accent with a variant (every variant used once while they last) or a
flite voice (kal16, awb, rms, slt), with its own pitch, speed and vocal-tract-length factor
(a resampling of the output); each clip jitters pitch and speed a little. Every clip is 1.0 s:
the word, trimmed of silence, at a random offset (cut with a fade when longer), over coloured
noise (spectral slope 0..2, SNR 10..30 dB), at a random level (speech RMS -35..-15 dBFS).

The split is speaker-independent: voices that share a variant (espeak-ng) or a base voice
(flite) form one group, and groups go to train / valid / test (70 / 15 / 15, per engine).
Everything is drawn from --seed, each clip from its own (seed, voice, word) generator, so a
seed gives the same task on any machine with the same synthesiser versions (recorded in
task_metadata.json).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
from tqdm import tqdm

from hear_mwmae.audio import SAMPLE_RATE, read_audio, resample
from hear_mwmae.files import atomic_write

log = logging.getLogger("make_speech_task")

TASK_NAME = "tts_keywords"
WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SPLITS = ("train", "valid", "test")
SPLIT_SHARES = (0.70, 0.15, 0.15)
CLIP_SAMPLES = SAMPLE_RATE  # 1.0 s
ENGINES = ("espeak-ng", "flite")
INSTALL = {"espeak-ng": "apt-get install espeak-ng", "flite": "apt-get install flite"}
ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
                  "en-029", "en-us-nyc")
# espeak-ng 1.51's voice variants that sound like a person (robots, whisper, croak, "fast" left out)
ESPEAK_VARIANTS = (
    "Alex", "Alicia", "Andrea", "Andy", "Annie", "AnxiousAndy", "Denis", "Diogo", "Gene", "Gene2", "Henrique",
    "Hugo", "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike", "Nguyen", "RicishayMax", "RicishayMax2",
    "RicishayMax3", "Storm", "Tweaky", "adam", "anika", "announcer", "antonio", "aunty", "belinda", "benjamin",
    "boris", "caleb", "david", "ed", "edward", "edward2", "f1", "f2", "f3", "f4", "f5", "grandma", "grandpa",
    "gustave", "iven", "iven2", "iven3", "iven4", "john", "kaukovalta", "klatt", "klatt2", "klatt3", "klatt4",
    "klatt5", "klatt6", "linda", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "marcelo", "max", "michel",
    "miguel", "norbert", "pablo", "paul", "pedro", "quincy", "rob", "robert", "sandro", "shelby", "steph",
    "steph2", "steph3", "travis", "victor", "zac")
FLITE_VOICES = ("kal16", "awb", "rms", "slt")
FLITE_PER_BASE = 2  # flite voices per base voice (different pitch / speed / tract length)


class ToolMissing(RuntimeError):
    """A synthesiser is not installed; the message says how to install it."""


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker. `group`: voices that must stay in one split (same variant / base voice)."""

    name: str  # v00, v01, ... (file names)
    engine: str  # "espeak-ng" or "flite"
    voice: str  # espeak-ng accent+variant, or the flite voice
    group: str
    pitch: float  # espeak-ng -p (0..99); unused by flite
    speed: float  # espeak-ng -s words per minute; flite: duration stretch (1 = normal)
    tract: float  # resampling factor of the output: > 1 longer, lower (a longer vocal tract)


# ----------------------------------------------------------------------------- voices and the split
def make_voices(n: int, seed: int, engines: Sequence[str] = ENGINES,
                variants: Sequence[str] = ESPEAK_VARIANTS) -> list[Voice]:
    """n voices: about an eighth flite (at most FLITE_PER_BASE per base voice) when it is used, the
    rest espeak-ng, each variant once while they last (then again, in a new order)."""
    rng = np.random.default_rng([seed, 1])
    n_flite = min(FLITE_PER_BASE * len(FLITE_VOICES), n // 8) if "flite" in engines else 0
    if "espeak-ng" not in engines:
        n_flite = n
    voices = []
    order: list[str] = []
    for i in range(n - n_flite):
        if not order:
            order = list(rng.permutation(list(variants)))
        variant = order.pop()
        accent = str(rng.choice(ESPEAK_ACCENTS))
        voices.append(Voice(f"v{i:02d}", "espeak-ng", f"{accent}+{variant}", f"espeak-ng:{variant}",
                            pitch=round(float(rng.uniform(20, 80)), 1), speed=round(float(rng.uniform(125, 185))),
                            tract=round(float(rng.uniform(0.92, 1.08)), 3)))
    for j in range(n_flite):
        base = FLITE_VOICES[j % len(FLITE_VOICES)]
        voices.append(Voice(f"v{len(voices):02d}", "flite", base, f"flite:{base}", pitch=0.0,
                            speed=round(float(rng.uniform(0.9, 1.2)), 3), tract=round(float(rng.uniform(0.9, 1.1)), 3)))
    return voices


def split_voices(voices: Sequence[Voice], seed: int, shares: Sequence[float] = SPLIT_SHARES) -> dict[str, list[Voice]]:
    """Voices -> {"train", "valid", "test"}: whole groups per split, shuffled per engine, valid and
    test each round(share * groups) of every engine's groups (the rest train)."""
    rng = np.random.default_rng([seed, 2])
    out: dict[str, list[Voice]] = {s: [] for s in SPLITS}
    for engine in sorted({v.engine for v in voices}):
        groups = sorted({v.group for v in voices if v.engine == engine})
        groups = [groups[i] for i in rng.permutation(len(groups))]
        n_valid, n_test = (round(share * len(groups)) for share in shares[1:])
        where = {g: ("valid" if i < n_valid else "test" if i < n_valid + n_test else "train")
                 for i, g in enumerate(groups)}
        for v in voices:
            if v.engine == engine:
                out[where[v.group]].append(v)
    return out


# ----------------------------------------------------------------------------- one clip
def trim_silence(audio: np.ndarray, floor_db: float = -40.0, frame: int = 160) -> np.ndarray:
    """(n,) -> the part from the first to the last 10 ms frame within floor_db of the loudest one."""
    frames = len(audio) // frame
    if frames == 0:
        return audio
    rms = np.sqrt((audio[: frames * frame].reshape(frames, frame) ** 2).mean(1)) + 1e-12
    active = np.flatnonzero(20 * np.log10(rms / rms.max()) > floor_db)
    return audio[active[0] * frame : (active[-1] + 1) * frame]


def coloured_noise(n: int, slope: float, rng: np.random.Generator) -> np.ndarray:
    """(n,) unit-RMS noise whose power falls as 1 / f^slope (0 white, 1 pink, 2 brown)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1]
    noise = np.fft.irfft(spectrum / f ** (slope / 2), n)
    return noise / (np.sqrt((noise ** 2).mean()) + 1e-12)


def render_clip(speech: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A word (n,) at 16 kHz -> a 1.0 s clip (CLIP_SAMPLES,) float32 in [-1, 1] and what was drawn:
    trimmed, placed at a random offset (cut with a 10 ms fade when longer), levelled, noised."""
    word = trim_silence(speech.astype(np.float64))
    cut = len(word) > CLIP_SAMPLES
    if cut:
        word = word[:CLIP_SAMPLES].copy()
        word[-160:] *= np.linspace(1, 0, 160)
    offset = int(rng.integers(0, CLIP_SAMPLES - len(word) + 1))
    level_db, snr_db, slope = rng.uniform(-35, -15), rng.uniform(10, 30), rng.uniform(0, 2)
    clip = np.zeros(CLIP_SAMPLES)
    clip[offset : offset + len(word)] = word * 10 ** (level_db / 20) / (np.sqrt((word ** 2).mean()) + 1e-12)
    clip += coloured_noise(CLIP_SAMPLES, slope, rng) * 10 ** ((level_db - snr_db) / 20)
    facts = {"offset_s": round(offset / SAMPLE_RATE, 3), "word_s": round(len(word) / SAMPLE_RATE, 3), "cut": cut,
             "level_db": round(level_db, 1), "snr_db": round(snr_db, 1), "noise_slope": round(slope, 2)}
    return np.clip(clip, -1, 1).astype(np.float32), facts


def synthesise(voice: Voice, word: str, rng: np.random.Generator, tmp: Path) -> np.ndarray:
    """The word in the voice, pitch and speed jittered per clip: (n,) float32 at 16 kHz."""
    path = tmp / f"{voice.name}_{word}.wav"
    if voice.engine == "espeak-ng":
        pitch = int(np.clip(voice.pitch + rng.uniform(-8, 8), 0, 99))
        speed = int(voice.speed * rng.uniform(0.9, 1.1))
        cmd = ["espeak-ng", "-v", voice.voice, "-p", str(pitch), "-s", str(speed), "-w", str(path), word]
    else:
        stretch = voice.speed * rng.uniform(0.9, 1.1)
        cmd = ["flite", "-voice", voice.voice, "--setf", f"duration_stretch={stretch:.3f}", "-t", word, "-o", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not path.is_file():
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[:200]}")
    audio, _ = read_audio(path)
    path.unlink()
    rate = round(SAMPLE_RATE * voice.tract / 100) * 100  # a multiple of 100: a short polyphase filter
    return resample(audio, SAMPLE_RATE, rate)  # played back at 16 kHz: longer and lower when tract > 1


# ----------------------------------------------------------------------------- the task folder
def write_task(task_dir: Path, labels: Sequence[str], clips: dict[str, list[tuple[str, np.ndarray, str]]],
               extra_metadata: dict | None = None) -> Path:
    """Write a single-label HEAR scene task: clips maps split -> [(file name, (CLIP_SAMPLES,) audio,
    label)]. The metadata is written last, so a folder without it is an unfinished one."""
    task_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(task_dir / "labelvocabulary.csv", "w") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["idx", "label"])
        writer.writerows(enumerate(labels))
    for split, rows in clips.items():
        folder = task_dir / str(SAMPLE_RATE) / split
        folder.mkdir(parents=True, exist_ok=True)
        for name, audio, _ in rows:
            sf.write(folder / name, audio, SAMPLE_RATE, subtype="PCM_16")
        with atomic_write(task_dir / f"{split}.json", "w") as fh:
            json.dump({name: [label] for name, _, label in rows}, fh, indent=1)
    metadata = {"task_name": task_dir.name, "version": "tts-1", "mode": "full", "embedding_type": "scene",
                "prediction_type": "multiclass", "split_mode": "trainvaltest", "sample_duration": 1.0,
                "evaluation": ["top1_acc"], "splits": list(clips), **(extra_metadata or {})}
    with atomic_write(task_dir / "task_metadata.json", "w") as fh:
        json.dump(metadata, fh, indent=2)
    return task_dir


def tool_versions(engines: Sequence[str]) -> dict[str, str]:
    """{engine: its version}; raises ToolMissing naming the apt package when one is not installed."""
    out = {}
    for engine in engines:
        if shutil.which(engine) is None:
            hint = f" (or --engines {','.join(e for e in engines if e != engine)})" if len(engines) > 1 else ""
            raise ToolMissing(f"{engine} not found: {INSTALL[engine]}{hint}")
        text = subprocess.run([engine, "--version"], capture_output=True, text=True).stdout
        line = next((x for x in text.splitlines() if "version" in x.lower() or "speak" in x.lower()), "?")
        out[engine] = line.split("Data at:")[0].strip()
    return out


def available_variants() -> list[str]:
    """ESPEAK_VARIANTS this espeak-ng has (it ignores unknown ones silently)."""
    listing = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True).stdout
    have = {line.split()[4].removeprefix("!v/") for line in listing.splitlines()[1:] if len(line.split()) >= 5}
    missing = [v for v in ESPEAK_VARIANTS if v not in have]
    if missing:
        log.warning("this espeak-ng lacks %d of the variants (%s): the task differs from espeak-ng 1.51's",
                    len(missing), ", ".join(missing[:5]))
    return [v for v in ESPEAK_VARIANTS if v in have]


def make_task(out_dir: Path, clips_per_word: int, seed: int, engines: Sequence[str], jobs: int) -> dict:
    """Synthesise and write OUT_DIR/TASK_NAME; returns its folder and per-split statistics."""
    versions = tool_versions(engines)
    variants = available_variants() if "espeak-ng" in engines else list(ESPEAK_VARIANTS)
    voices = make_voices(clips_per_word, seed, engines, variants)
    by_split = split_voices(voices, seed)
    split_of = {v.name: s for s, vs in by_split.items() for v in vs}
    jobs_list = [(v, w) for v in voices for w in WORDS]

    with tempfile.TemporaryDirectory() as tmp_name, ThreadPoolExecutor(jobs) as pool:
        def one(job: tuple[Voice, str]) -> tuple[np.ndarray, dict]:
            voice, word = job
            rng = np.random.default_rng([seed, int(voice.name[1:]), WORDS.index(word)])
            return render_clip(synthesise(voice, word, rng, Path(tmp_name)), rng)

        rendered = list(tqdm(pool.map(one, jobs_list), total=len(jobs_list), desc="synthesising", unit="clip"))
    clips: dict[str, list[tuple[str, np.ndarray, str]]] = {s: [] for s in SPLITS}
    facts = []
    for (voice, word), (audio, f) in zip(jobs_list, rendered):
        clips[split_of[voice.name]].append((f"{word}_{voice.name}.wav", audio, word))
        facts.append({**f, "split": split_of[voice.name]})
    with atomic_write(out_dir / TASK_NAME / "voices.json", "w") as fh:
        json.dump({v.name: {**asdict(v), "split": split_of[v.name]} for v in voices}, fh, indent=1)
    task_dir = write_task(out_dir / TASK_NAME, WORDS, clips, {
        "generator": {"script": "scripts/make_speech_task.py", "seed": seed, "clips_per_word": clips_per_word,
                      "engines": versions}})  # its metadata last: the folder is complete
    stats = {}
    for split in SPLITS:
        vs, fs = by_split[split], [f for f in facts if f["split"] == split]
        stats[split] = {"clips": len(clips[split]), "voices": len(vs),
                        "by_engine": {e: sum(v.engine == e for v in vs) for e in engines},
                        "cut": sum(f["cut"] for f in fs),
                        "mean_word_s": round(float(np.mean([f["word_s"] for f in fs])), 3)}
    return {"task_dir": task_dir, "splits": stats}


def _argument_problem(engines: Sequence[str], clips_per_word: int, task_dir: Path, overwrite: bool) -> str | None:
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown or not engines:
        return f"unknown engines {unknown}; choose from {list(ENGINES)}"
    if clips_per_word < 10:
        return f"--clips-per-word must be >= 10 (every split needs voices), got {clips_per_word}"
    if task_dir.exists() and not overwrite and (not task_dir.is_dir() or any(task_dir.iterdir())):
        return f"{task_dir} exists; --overwrite to replace it"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--clips-per-word", type=int, default=70, help="= voices (each says every word once); >= 10")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated: espeak-ng, flite")
    parser.add_argument("--jobs", type=int, default=2, help="synthesiser processes at once")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing task folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    task_dir = args.out_dir / TASK_NAME
    problem = _argument_problem(engines, args.clips_per_word, task_dir, args.overwrite)
    if problem:
        log.error("%s", problem)
        return 2
    began = time.perf_counter()
    try:
        tool_versions(engines)  # before anything is removed
        if task_dir.is_dir():
            shutil.rmtree(task_dir)
        elif task_dir.exists():
            task_dir.unlink()
        result = make_task(args.out_dir, args.clips_per_word, args.seed, engines, max(1, args.jobs))
    except (RuntimeError, OSError) as exc:  # ToolMissing, a synthesiser that failed, a disk problem
        log.error("%s", exc)
        return 2
    for split, s in result["splits"].items():
        engines_text = ", ".join(f"{n} {e}" for e, n in s["by_engine"].items())
        sys.stdout.write(f"{split}: {s['clips']} clips, {s['voices']} voices ({engines_text}), {len(WORDS)} words, "
                         f"mean word {s['mean_word_s']:.2f} s, {s['cut']} cut to 1 s\n")
    log.info("wrote %s in %.1f s", result["task_dir"], time.perf_counter() - began)
    return 0


if __name__ == "__main__":
    sys.exit(main())
