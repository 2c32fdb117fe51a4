"""A property-based test of `hear-mwmae embed` (Hypothesis, stateful): generated trees of hostile
names and contents, then random interleavings of runs, edits, deletions, additions, checkpoint
changes and runs killed half-way. After every run that finishes:

1. every entry the search finds is in the index exactly once, with the status the file calls for
   (ok / error with the decoder's own message / skipped with its reason), and every earlier input
   that is gone is "removed";
2. every "ok" record's outputs exist and equal a fresh single-file embedding of the input as it is
   now, with the checkpoint of this run (nothing from a previous setting or content is reused);
3. no output without a record (ok, or removed with outputs kept), no temporary file, no "pending".

Bounded for CI: the "ci" profile runs `EXAMPLES` generated histories of up to `STEPS` steps each,
the same ones every time (derandomized); HEAR_MWMAE_PROPERTY_PROFILE=thorough runs a longer,
random search.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule, run_state_machine_as_test

import hear_mwmae
from hear_mwmae import embed
from hear_mwmae.audio import AUDIO_SUFFIXES, read_audio
from hear_mwmae.checkpoint import save_checkpoint
from hear_mwmae.embed_index import INDEX_NAME, EmbedFolderError, Index, from_json
from hear_mwmae.embed_plan import find_jobs
from hear_mwmae.files import sha256_file

SR = 16000
EXAMPLES, STEPS = 60, 12
PROFILE_ENV = "HEAR_MWMAE_PROPERTY_PROFILE"
settings.register_profile("ci", max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, database=None,
                          derandomize=True,  # the same histories on every CI run: a failure reproduces
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=200, stateful_step_count=20, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# names: spaces, unicode, bytes that are not UTF-8, one stem in many formats, names made to collide
STEMS = [b"speech", b"x", b"a b", "caf\u00e9".encode(), "\u65e5\u672c".encode(), b"caf\xe9", b"\xff\xfe", b"x.wav"]
EXTS = [b".wav", b".flac", b".ogg", b".mp3", b".opus", b".m4a", b".WAV", b".ts", b".txt", b"", b".npy"]
FOLDERS = [b"sub", b"d.npy", "\u00e9".encode(), b"\xff", b"x.wav", b".hidden", b"a b"]
FORMATS = ["wav", "flac", "ogg", "mp3", "opus", "m4a"]
BROKEN = ["empty", "truncated", "text"]


class Killed(BaseException):
    """What a kill looks like from inside: nothing after it runs (not even `except Exception`)."""


def _encode(fmt: str, audio: np.ndarray) -> bytes:
    if fmt == "m4a":
        av = pytest.importorskip("av")
        buf = io.BytesIO()
        with av.open(buf, "w", format="mp4") as container:
            stream = container.add_stream("aac", rate=SR)
            stream.layout = "mono"
            frame = av.AudioFrame.from_ndarray(audio[None], format="flt", layout="mono")
            frame.sample_rate = SR
            for packet in [*stream.encode(frame), *stream.encode(None)]:
                container.mux(packet)
        return buf.getvalue()
    buf = io.BytesIO()
    kw = {"opus": dict(format="OGG", subtype="OPUS"), "wav": dict(format="WAV", subtype="PCM_16")}
    sf.write(buf, audio, SR, **kw.get(fmt, dict(format=fmt.upper())))
    return buf.getvalue()


@pytest.fixture(scope="module")
def contents() -> dict[str, list[bytes]]:
    """Encoded files to draw from: per format three clips (two of one length: same size in WAV)."""
    rng = np.random.default_rng(0)
    pool = {}
    for fmt in FORMATS:
        clips = []
        for seconds in (0.5, 0.5, 0.75):
            t = np.arange(int(seconds * SR)) / SR
            clips.append(_encode(fmt, (0.3 * np.sin(2 * np.pi * rng.uniform(100, 900) * t)
                                       + 0.05 * rng.standard_normal(t.size)).astype(np.float32)))
        pool[fmt] = clips
    pool["empty"] = [b""]
    pool["truncated"] = [pool["wav"][2][:900]]
    pool["text"] = [b"hello, this is not audio\n" * 3]
    return pool


@pytest.fixture(scope="module")
def models(converted, tmp_path_factory) -> dict[str, tuple]:
    """Two checkpoints of one architecture (other weights): A and B, with their embed settings."""
    c = converted("mwmae_tiny")
    root = tmp_path_factory.mktemp("property-models")
    out = {}
    for name, scale in (("A", 1.0), ("B", 1.3)):
        state = {k: v * scale if k.endswith("mlp.fc1.weight") else v for k, v in c.state_dict.items()}
        path = save_checkpoint(root / f"{name}.pt", c.config, state, provenance=c.provenance)
        out[name] = (hear_mwmae.load_model(str(path), device="cpu"),
                     {"model": str(path), "checkpoint_sha256": sha256_file(path), "precision": "fp32"})
    return out


class EmbedMachine(RuleBasedStateMachine):
    """The file tree, the output folder and what each run must leave; set `models` and `contents` first."""

    models: dict = {}
    contents: dict = {}
    fresh: dict = {}  # (model, sha256 of the decoded samples) -> the single-file embedding
    stats: dict = {"runs": 0, "killed": 0, "refused": 0, "histories": 0, "records_checked": 0}

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="embed-property-"))
        self.root = Path(os.path.realpath(self.tmp)) / "in"
        self.out = self.tmp / "out"
        self.root.mkdir()
        self.model = "A"
        self.ever: set[str] = set()  # every input that ever had a record
        self.named: list[str] = []  # the file the last run named on its command line
        EmbedMachine.stats["histories"] += 1

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------------------- the tree
    def _path(self, folders: list[bytes], name: bytes) -> bytes:
        return os.path.join(os.fsencode(self.root), *folders, name)

    def _add(self, folders: list[bytes], name: bytes, kind: str, which: int) -> None:
        path = self._path(folders, name)
        parent = os.path.dirname(path)
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError:
            return  # a file, a broken link or a link loop already holds a folder's name
        if os.path.lexists(path):
            return
        if kind == "loop":
            os.symlink(os.path.basename(path), path)
        elif kind == "broken":
            os.symlink(b"nowhere.wav", path)
        elif kind == "link":
            targets = [p for p in self._files() if not os.path.islink(p)]
            if targets:
                os.symlink(targets[which % len(targets)], path)
        elif kind == "dirlink":
            os.symlink(parent, path)
        else:
            pool = self.contents[kind]
            with open(path, "wb") as fh:
                fh.write(pool[which % len(pool)])

    def _files(self) -> list[bytes]:
        found = []
        for dirpath, dirnames, filenames in os.walk(os.fsencode(self.root)):
            found += [os.path.join(dirpath, n) for n in filenames]
            found += [os.path.join(dirpath, d) for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        return sorted(found)

    entries = st.tuples(st.lists(st.sampled_from(FOLDERS), max_size=2),
                        st.builds(lambda s, e: s + e, st.sampled_from(STEMS), st.sampled_from(EXTS)),
                        st.sampled_from(FORMATS * 3 + BROKEN + ["loop", "broken", "link", "dirlink"]),
                        st.integers(0, 2))

    @initialize(tree=st.lists(entries, min_size=1, max_size=10))
    def make_tree(self, tree) -> None:
        for folders, name, kind, which in tree:
            self._add(folders, name, kind, which)

    @rule(entry=entries)
    def add(self, entry) -> None:
        self._add(*entry)

    @precondition(lambda self: any(not os.path.islink(p) for p in self._files()))
    @rule(data=st.data(), keep_time=st.booleans())
    def edit(self, data, keep_time: bool) -> None:
        """Other content at the same path; with keep_time the modification time is set back."""
        files = [p for p in self._files() if not os.path.islink(p)]
        path = data.draw(st.sampled_from(files), label="edited")
        kind = data.draw(st.sampled_from(FORMATS + BROKEN), label="new content")
        pool = self.contents[kind]
        before = os.stat(path)
        with open(path, "wb") as fh:
            fh.write(pool[data.draw(st.integers(0, len(pool) - 1))])
        if keep_time:
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))

    @precondition(lambda self: bool(self._files()))
    @rule(data=st.data())
    def delete(self, data) -> None:
        os.unlink(data.draw(st.sampled_from(self._files()), label="deleted"))

    @rule(force=st.booleans(), keep=st.booleans())
    def run_with_the_other_checkpoint(self, force: bool, keep: bool) -> None:
        """Another model into the same OUT: refused without --force (nothing touched), redone with it."""
        self.model = "B" if self.model == "A" else "A"
        self.run(force, keep, hash_inputs=False, name_one=False)

    # ------------------------------------------------------------------------- runs
    def _run(self, force: bool, keep: bool, hash_inputs: bool, name_one: bool) -> None:
        runtime, run_settings = self.models[self.model]
        files = [os.fsdecode(p) for p in self._files() if not os.path.isdir(p)]  # a file, or a link to none
        self.named = files[:1] if name_one else []
        plan = find_jobs([self.root, *self.named], "timestamp", exclude=[self.out])
        embed.embed_files(runtime, plan, self.out, settings=run_settings, mode="timestamp", force=force,
                          keep_removed=keep, hash_inputs=hash_inputs, progress=False)

    def _other_settings(self) -> bool:
        if not self.out.is_dir():
            return False
        mine = self.models[self.model][1]["checkpoint_sha256"]
        return any(r.get("checkpoint_sha256") not in (None, mine) and (r["status"] == "ok" or
                   r["status"].startswith("pending")) for r in Index(self.out).records.values())

    @rule(force=st.booleans(), keep=st.booleans(), hash_inputs=st.booleans(), name_one=st.booleans())
    def run(self, force: bool, keep: bool, hash_inputs: bool, name_one: bool) -> None:
        refuse = self._other_settings() and not force
        before = self._snapshot()
        try:
            self._run(force, keep, hash_inputs, name_one)
        except EmbedFolderError as exc:
            assert refuse, exc
            assert "--force" in str(exc) and self._snapshot() == before  # refused: nothing touched
            EmbedMachine.stats["refused"] += 1
            return
        assert not refuse
        EmbedMachine.stats["runs"] += 1
        self._check(keep)

    @rule(after=st.integers(1, 4), half_a_line=st.booleans())
    def killed_run(self, after: int, half_a_line: bool) -> None:
        """A run killed at its `after`-th output write: what `kill -9` leaves (a temporary file, maybe
        half an index line) stays behind."""
        real, calls = embed.atomic_save, []

        def dies(folder, name: str, array: np.ndarray) -> None:
            path = folder.path(name)
            calls.append(path)
            if len(calls) == after:
                path.parent.mkdir(parents=True, exist_ok=True)
                (path.parent / f".{path.name}.k1ll3d_x.tmp").write_bytes(b"\x93NUMPY half")
                raise Killed
            real(folder, name, array)

        embed.atomic_save = dies
        try:
            self._run(force=True, keep=False, hash_inputs=False, name_one=False)
        except Killed:
            EmbedMachine.stats["killed"] += 1
            if half_a_line:
                with open(self.out / INDEX_NAME, "a", encoding="utf-8") as fh:
                    fh.write('{"input": "/half a li')
        finally:
            embed.atomic_save = real
        self._check_outputs_have_records()

    # ------------------------------------------------------------------------- invariants
    def _snapshot(self) -> dict:
        if not self.out.is_dir():
            return {}
        return {p: p.read_bytes() for p in sorted(self.out.rglob("*")) if p.is_file() and p.name != ".embed.lock"}

    @staticmethod
    def _decodes(path: str) -> str:
        try:
            read_audio(path)
            return "ok"
        except ValueError as exc:  # the decoder's own words, exactly
            return f"error: {' '.join(str(exc).split())}"

    def _expected(self) -> dict[str, str]:
        """input -> the status prefix (or whole status) the current tree calls for, for every input the
        run looks at: what the search finds, and the file named on the command line (attempted)."""
        expected: dict[str, str] = {p: self._decodes(p) if os.path.isfile(p) else "error: " for p in self.named}
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in list(dirnames):
                path = os.path.join(dirpath, name)
                if name.startswith("."):
                    expected[path] = "skipped: hidden directory"
                    dirnames.remove(name)
                elif os.path.islink(path):
                    expected[path] = "skipped: symbolic link to a directory"
                    dirnames.remove(name)
                elif os.path.splitext(name)[1].lower() in AUDIO_SUFFIXES:
                    expected[path] = "skipped: a directory named like an audio file"
            for name in filenames:
                path = os.path.join(dirpath, name)
                if name.startswith("."):
                    expected[path] = "skipped: hidden file"
                elif not os.path.isfile(path):
                    expected[path] = "error: unreadable: a "  # broken link, link loop
                elif path in expected:
                    continue  # named as well: attempted
                elif os.path.splitext(name)[1].lower() not in AUDIO_SUFFIXES:
                    expected[path] = "skipped: not audio"
                else:
                    expected[path] = self._decodes(path)
        return expected

    def _fresh(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        """The single-file embedding of `path` as it is now (cached by model and decoded samples: the
        same bytes under another extension may go to another decoder)."""
        audio = read_audio(path)[0]
        key = (self.model, hashlib.sha256(audio.tobytes()).hexdigest())
        if key not in self.fresh:
            emb, ts = hear_mwmae.get_timestamp_embeddings(torch.from_numpy(audio[None]), self.models[self.model][0])
            self.fresh[key] = (emb[0].numpy(), ts[0].numpy())
        return self.fresh[key]

    def _check_outputs_have_records(self) -> None:
        if not self.out.is_dir():
            return
        index = Index(self.out)
        claimed = {p for r in index.records.values() for p in (r.get("output"), r.get("timestamps")) if p}
        for path in self.out.rglob("*.npy"):
            rel = path.relative_to(self.out).as_posix()
            assert rel in claimed, f"{rel}: an output without a record"

    def _check(self, keep: bool) -> None:
        lines = [from_json(line) for line in (self.out / INDEX_NAME).read_text(encoding="utf-8").splitlines()]
        assert len({r["input"] for r in lines}) == len(lines), "an input twice in the compacted index"
        records = {r["input"]: r for r in lines}
        expected = self._expected()
        mine = self.models[self.model][1]["checkpoint_sha256"]
        for path, status in expected.items():
            assert path in records, f"{path!r} is not in the index"
            assert records[path]["status"].startswith(status), (path, records[path]["status"], status)
        self.ever |= set(records)
        for path in self.ever - set(expected):  # not looked at by this run: gone, or left as it was
            status = records[path]["status"]
            if not os.path.isfile(path) and not os.path.islink(path):
                assert status.startswith("removed: input no longer exists"), (path, status)
                assert keep or not any(os.path.exists(self.out / p) for p in (records[path].get("output"),
                                                                               records[path].get("timestamps")) if p)
        for path, r in records.items():
            assert not r["status"].startswith("pending"), (path, r["status"])
            if r["status"] != "ok":
                continue
            assert r["checkpoint_sha256"] == mine and r.get("reason")
            assert os.path.isfile(self.out / r["output"]) and os.path.isfile(self.out / r["timestamps"])
            if path not in expected:
                continue  # a file in a hidden folder, named by an earlier run: not looked at now
            emb, ts = self._fresh(path)
            # batched (as embed runs) vs alone: float32 kernels differ by ~1e-4; a stale or other-model
            # result differs by ~1e-1 and more
            np.testing.assert_allclose(np.load(self.out / r["output"]), emb, rtol=1e-3, atol=5e-4)
            np.testing.assert_array_equal(np.load(self.out / r["timestamps"]), ts)
            EmbedMachine.stats["records_checked"] += 1
        self._check_outputs_have_records()
        for path in self.out.rglob("*.tmp"):
            pytest.fail(f"{path}: a temporary file left behind")


@pytest.mark.usefixtures("one_thread")
def test_embed_keeps_its_promises_over_random_histories(models, contents):
    EmbedMachine.models, EmbedMachine.contents = models, contents
    run_state_machine_as_test(EmbedMachine, settings=settings.get_profile(os.environ.get(PROFILE_ENV, "ci")))
    stats = EmbedMachine.stats
    print(f"\nproperty test: {stats['histories']} histories, {stats['runs']} finished runs, {stats['killed']} killed, "
          f"{stats['refused']} refused (other checkpoint), {stats['records_checked']} ok records compared")
    assert stats["runs"] > 0 and stats["records_checked"] > 0
