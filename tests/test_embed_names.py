"""`hear-mwmae embed`: output names that never collide, any file name the OS allows, inputs that
disappear or are replaced, output folders of the older layout, runs that stop half-way."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import soundfile as sf
import torch

import hear_mwmae
from hear_mwmae import cli as package_cli
from hear_mwmae import embed
from hear_mwmae.embed_index import INDEX_NAME, LAYOUT_NAME, from_json, to_json
from hear_mwmae.embed_plan import canonical, find_jobs, output_names
from hear_mwmae.files import sha256_file

SR = 16000
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runtime(tiny_checkpoint):
    return hear_mwmae.load_model(str(tiny_checkpoint), device="cpu")


def cli(*argv) -> int:
    return package_cli.main(["embed", "--no-progress", *map(str, argv)])


def tone(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def write(path: str | bytes | Path, audio: np.ndarray, **kw) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:  # a file object: soundfile takes any name then
        sf.write(fh, audio, SR, format=kw.pop("format", "WAV"), **kw)


def out_file(out: Path, source, timestamps: bool = False) -> Path:
    emb, ts = output_names(canonical(Path(os.fsdecode(source))), "timestamp")
    return out / (ts if timestamps else emb)


def records(out: Path) -> dict[str, dict]:
    """index.jsonl by input (exact names: base64 fields decoded)."""
    return {r["input"]: r for r in map(from_json, (out / INDEX_NAME).read_text(encoding="utf-8").splitlines())}


def scene(runtime, audio: np.ndarray) -> np.ndarray:
    return hear_mwmae.get_scene_embeddings(torch.from_numpy(audio[None]), runtime)[0].numpy()


# ----------------------------------------------------------------------------- names
def test_one_name_in_several_formats_and_one_file_name_in_two_folders(tmp_path, tiny_checkpoint, runtime):
    """speech.mp3 / .ogg / .flac / .wav side by side, and a/sub/x.wav + b/sub/x.wav named directly:
    before, all but one failed with "output ... clashes"."""
    src = tmp_path / "in"
    clips = {}
    for i, fmt in enumerate(["WAV", "OGG", "FLAC", "MP3"]):
        clips[src / f"speech.{fmt.lower()}"] = tone(1.0, i)
        write(src / f"speech.{fmt.lower()}", clips[src / f"speech.{fmt.lower()}"], format=fmt)
    for i, folder in enumerate("ab"):
        clips[tmp_path / folder / "sub" / "x.wav"] = tone(0.5 + 0.25 * i, 10 + i)
        write(tmp_path / folder / "sub" / "x.wav", clips[tmp_path / folder / "sub" / "x.wav"], subtype="FLOAT")
    out = tmp_path / "out"
    assert cli("--model", tiny_checkpoint, src, tmp_path / "a/sub/x.wav", tmp_path / "b/sub/x.wav", "--out", out) == 0
    index = records(out)
    assert {r["status"] for r in index.values()} == {"ok"} and len(index) == 6
    for path, audio in clips.items():
        assert index[str(canonical(path))]["output"] == out_file(out, path).relative_to(out).as_posix()
        decoded = sf.read(path, dtype="float32")[0]
        np.testing.assert_allclose(np.load(out_file(out, path)), scene(runtime, decoded), rtol=1e-4, atol=1e-5)
    assert out_file(out, src / "speech.mp3").name == "speech.mp3.npy"  # the extension is kept
    # the same file through another spelling of its path, and alone: the same output, reused
    assert cli("--model", tiny_checkpoint, tmp_path / "a" / ".." / "a" / "sub" / "x.wav", "--out", out) == 0
    assert len(records(out)) == 6


@pytest.mark.parametrize("names", [
    ["x.wav", "x.wav.ts"],            # x.wav.ts.npy would be x.wav's timestamps
    ["x.wav", "x.wav.ts_", "x.wav.ts__"],
    ["d.npy/x.wav", "d"],             # a folder named d.npy holding x.wav, beside the file d
    ["y.wav", "y.wav.npy/z.wav"],     # a folder named like y.wav's output
])
def test_output_names_never_collide_even_for_names_made_to(names):
    root = Path("/corpus")
    outputs = [p for n in names for p in output_names(root / n, "timestamp")]
    assert len(set(outputs)) == len(outputs), outputs
    files = set(outputs)
    folders = {parent for p in outputs for parent in p.parents}
    assert not files & folders  # no output is a folder of another
    assert output_names(root / "x.wav", "scene") == (PurePosixPath("corpus/x.wav.npy"), None)


def test_file_names_that_are_not_utf8(tmp_path, tiny_checkpoint, runtime):
    """Latin-1 and invalid bytes in file and folder names: decoded, embedded, recorded exactly."""
    base = os.fsencode(tmp_path)
    latin = base + b"/in/caf\xe9 \xc0 la plage.wav"
    nested = base + b"/in/dossier \xff/voix.flac"
    write(latin, tone(1.0, 1))
    write(nested, tone(0.75, 2), format="FLAC")
    out = tmp_path / "out"
    assert cli("--model", tiny_checkpoint, tmp_path / "in", "--out", out) == 0
    text = (out / INDEX_NAME).read_text(encoding="utf-8")  # valid UTF-8 throughout
    index = records(out)
    for raw in (latin, nested):
        record = index[os.fsdecode(raw)]
        assert record["status"] == "ok" and os.fsencode(record["input"]) == raw
        assert os.path.isfile(out / record["output"])
        np.testing.assert_allclose(np.load(out / record["output"]), scene(runtime, sf.read(open(raw, "rb"))[0].astype(
            np.float32)), rtol=1e-4, atol=1e-5)
    raw_line = next(json.loads(line) for line in text.splitlines() if "voix" in line)
    assert raw_line["input"].endswith("dossier \\xff/voix.flac")  # a readable stand-in ...
    assert os.fsencode(raw_line["input"]) != nested  # ... that is not the name ...
    assert from_json(to_json(index[os.fsdecode(nested)]))["input"] == os.fsdecode(nested)  # ... the b64 field is
    assert cli("--model", tiny_checkpoint, tmp_path / "in", "--out", out) == 0  # and resuming finds them
    assert {r["reason"] for r in records(out).values()} == {"new"}


# ----------------------------------------------------------------------------- staleness
def test_deleted_inputs_are_removed_or_kept_and_listed(tmp_path, tiny_checkpoint, caplog):
    src, out = tmp_path / "in", tmp_path / "out"
    for name in ("a.wav", "b.wav", "sub/c.wav"):
        write(src / name, tone(0.5, len(name)))
    assert cli("--model", tiny_checkpoint, src, "--out", out) == 0
    (src / "a.wav").unlink()
    caplog.set_level(logging.INFO)
    assert cli("--model", tiny_checkpoint, src, "--out", out, "--keep-removed") == 0
    assert records(out)[str(canonical(src / "a.wav"))]["status"] == \
        "removed: input no longer exists; outputs kept (--keep-removed)"
    assert out_file(out, src / "a.wav").is_file()
    assert "their outputs were kept (--keep-removed)" in caplog.text
    (src / "sub" / "c.wav").unlink()
    assert cli("--model", tiny_checkpoint, src, "--out", out) == 0
    index = records(out)
    for gone in ("a.wav", "sub/c.wav"):
        assert index[str(canonical(src / gone))]["status"] == "removed: input no longer exists"
        assert not out_file(out, src / gone).exists()
    assert not out_file(out, src / "sub" / "c.wav").parent.exists()  # emptied folders go too
    assert index[str(canonical(src / "b.wav"))]["status"] == "ok"
    assert sorted(p.name for p in out.rglob("*.npy")) == ["b.wav.npy"]
    (src / "b.wav").unlink()  # a file replaced by a folder of its name: skipped, its old outputs go
    write(src / "b.wav" / "inner.flac", tone(0.5, 7), format="FLAC")
    write(src / "notes.txt", tone(0.5, 8))  # audio under another extension, named on the command line
    assert cli("--model", tiny_checkpoint, src, src / "notes.txt", "--out", out) == 0
    assert records(out)[str(canonical(src / "notes.txt"))]["status"] == "ok"
    (src / "notes.txt").unlink()
    (src / "notes.txt").mkdir()  # a folder now, that no search reports (not named like audio)
    assert cli("--model", tiny_checkpoint, src, "--out", out) == 0
    index = records(out)
    assert index[str(canonical(src / "b.wav"))]["status"].startswith("skipped: a directory named like an audio file")
    assert index[str(canonical(src / "b.wav" / "inner.flac"))]["status"] == "ok"
    assert index[str(canonical(src / "notes.txt"))]["status"] == "removed: input no longer exists (a folder now)"
    assert sorted(p.name for p in out.rglob("*.npy")) == ["inner.flac.npy"]


def test_a_run_over_other_folders_leaves_absent_inputs_alone(tmp_path, tiny_checkpoint):
    """Only what a run is given is accounted for: an unmounted drive must not lose its results."""
    out = tmp_path / "out"
    write(tmp_path / "drive1" / "a.wav", tone(0.5, 1))
    write(tmp_path / "drive2" / "b.wav", tone(0.5, 2))
    assert cli("--model", tiny_checkpoint, tmp_path / "drive1", tmp_path / "drive2", "--out", out) == 0
    (tmp_path / "drive1").rename(tmp_path / "unmounted")
    assert cli("--model", tiny_checkpoint, tmp_path / "drive2", "--out", out) == 0
    assert records(out)[str(canonical(tmp_path / "drive1" / "a.wav"))]["status"] == "ok"
    assert out_file(out, tmp_path / "drive1" / "a.wav").is_file()
    assert cli("--model", tiny_checkpoint, tmp_path / "drive1", "--out", out) == 1  # named, missing: an error
    assert records(out)[str(canonical(tmp_path / "drive1" / "a.wav"))]["status"] == "ok"


def test_a_replacement_of_the_same_size_and_mtime_is_noticed(tmp_path, tiny_checkpoint, runtime):
    """The README's "never stale": a file replaced by another of the same size and modification time."""
    src, out = tmp_path / "a.wav", tmp_path / "out"
    write(src, tone(1.0, 1), subtype="FLOAT")
    assert cli("--model", tiny_checkpoint, src, "--out", out) == 0
    recorded = os.stat(src)

    write(tmp_path / "other.wav", tone(1.0, 2), subtype="FLOAT")  # same size: float WAV of the same length
    os.utime(tmp_path / "other.wav", ns=(recorded.st_atime_ns, recorded.st_mtime_ns))
    os.replace(tmp_path / "other.wav", src)  # what cp/rsync/tar do: a new file renamed over the old one
    assert (os.stat(src).st_size, os.stat(src).st_mtime_ns) == (recorded.st_size, recorded.st_mtime_ns)
    assert cli("--model", tiny_checkpoint, src, "--out", out) == 0
    assert records(out)[str(canonical(src))]["reason"] == "input replaced: another file (inode) at this path"
    np.testing.assert_allclose(np.load(out_file(out, src)), scene(runtime, tone(1.0, 2)), rtol=1e-4, atol=1e-5)

    now = os.stat(src)
    with open(src, "r+b") as fh:  # rewritten in place, same size, and the time set back
        fh.seek(100)
        fh.write(bytes(64))
    os.utime(src, ns=(now.st_atime_ns, now.st_mtime_ns))
    assert cli("--model", tiny_checkpoint, src, "--out", out) == 0
    assert records(out)[str(canonical(src))]["reason"] == "input changed: status-change time (ctime) differs"


def test_a_failed_re_embedding_deletes_the_stale_output(tmp_path, tiny_checkpoint):
    src, out = tmp_path / "a.wav", tmp_path / "out"
    write(src, tone(1.0, 1))
    assert cli("--model", tiny_checkpoint, src, "--out", out) == 0
    src.write_bytes(b"not audio any more")
    assert cli("--model", tiny_checkpoint, src, "--out", out) == 1
    assert records(out)[str(canonical(src))]["status"].startswith("error: not audio")
    assert not out_file(out, src).exists()


# ----------------------------------------------------------------------------- stopped runs, older folders
def test_a_run_stopped_while_writing_leaves_a_pending_record_and_is_finished_next_time(
        tmp_path, tiny_checkpoint, runtime, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        write(src / f"f{i}.wav", tone(0.5, i))
    real_save, calls = embed.atomic_save, []

    def killed_on_the_second(folder, name, array):
        calls.append(name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as kill would, between two files
        real_save(folder, name, array)

    monkeypatch.setattr(embed, "atomic_save", killed_on_the_second)
    assert cli("--model", tiny_checkpoint, src, "--out", out) == 130
    monkeypatch.setattr(embed, "atomic_save", real_save)
    lines = [from_json(line) for line in (out / INDEX_NAME).read_text().splitlines()]
    assert [r["status"].split(":")[0] for r in lines] == ["pending", "ok", "pending"]
    leftover = out_file(out, src / "f1.wav").with_name(".f1.wav.npy.abcd1234.tmp")
    leftover.write_bytes(b"half")  # what kill -9 leaves inside atomic_write
    (src / "f0.wav").unlink()  # ... and an input deleted meanwhile
    assert cli("--model", tiny_checkpoint, src, "--out", out) == 0
    index = records(out)
    assert index[str(canonical(src / "f1.wav"))]["reason"] == "an earlier run stopped while writing it"
    assert index[str(canonical(src / "f2.wav"))]["reason"] == "new"
    assert index[str(canonical(src / "f0.wav"))]["status"] == "removed: input no longer exists"
    assert not leftover.exists() and sorted(p.name for p in out.rglob("*.npy")) == ["f1.wav.npy", "f2.wav.npy"]
    np.testing.assert_allclose(np.load(out_file(out, src / "f1.wav")),
                               scene(runtime, sf.read(src / "f1.wav", dtype="float32")[0]), rtol=1e-4, atol=1e-5)


def _layout_1_folder(tmp_path: Path, runtime, checkpoint: Path) -> tuple[Path, Path]:
    """An OUT as hear-mwmae 0.1 left it: outputs named <stem>.npy below the folder named,
    a second copy of one input (embedded from two folder arguments), a stale output of a failed file."""
    src, out = tmp_path / "in", tmp_path / "out"
    settings = {"model": str(checkpoint), "checkpoint_sha256": sha256_file(checkpoint), "precision": "fp32",
                "mode": "timestamp"}
    lines = []
    for rel, old, seed in (("a.wav", "a", 1), ("sub/b.flac", "sub/b", 2), ("sub/b.flac", "b", 2),  # 2nd: `in/sub`
                           ("bad.wav", "bad", 3)):
        path = src / rel
        if not path.exists():
            write(path, tone(0.5, seed), format="FLAC" if rel.endswith("flac") else "WAV")
        emb, ts = hear_mwmae.get_timestamp_embeddings(torch.from_numpy(sf.read(path, dtype="float32")[0][None]),
                                                      runtime)
        (out / old).parent.mkdir(parents=True, exist_ok=True)
        np.save(out / f"{old}.npy", emb[0].numpy())
        np.save(out / f"{old}.ts.npy", ts[0].numpy())
        st = os.stat(path)
        lines.append({"input": str(path.resolve()), "output": f"{old}.npy", "timestamps": f"{old}.ts.npy",
                      "status": "ok" if rel != "bad.wav" else "error: unreadable: ...", "reason": "new",
                      "input_size": st.st_size, "input_mtime_ns": st.st_mtime_ns, **settings})
    (out / INDEX_NAME).write_text("".join(json.dumps(r) + "\n" for r in lines[:2]))
    (out / "index.part-00001.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines[2:]))  # a killed torchrun
    return src, out


def test_an_output_folder_of_the_older_layout_is_renamed_and_keeps_resuming(tmp_path, tiny_checkpoint, runtime,
                                                                            caplog):
    src, out = _layout_1_folder(tmp_path, runtime, tiny_checkpoint)
    out_file(out, src / "a.wav").parent.mkdir(parents=True)
    os.replace(out / "a.npy", out_file(out, src / "a.wav"))  # as if a migration had been killed after one rename
    (src / "bad.wav").write_bytes(b"still bad")
    caplog.set_level(logging.INFO)
    assert cli("--model", tiny_checkpoint, src, "--out", out, "--mode", "timestamp") == 1  # bad.wav
    assert "renamed the results of an older hear-mwmae to today's names" in caplog.text
    assert "embedded 0, reused 2 (already done), failed 1" in caplog.text  # nothing re-embedded
    assert json.loads((out / LAYOUT_NAME).read_text())["layout"] == 2
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npy"))
    assert files == sorted(out_file(out, src / n, ts).relative_to(out).as_posix()
                           for n in ("a.wav", "sub/b.flac") for ts in (False, True))  # no copy, no stale output
    assert not (out / "sub").exists() and not list(out.glob("index.part-*"))
    assert len((out / INDEX_NAME).read_text().splitlines()) == 3
    record = records(out)[str(canonical(src / "a.wav"))]
    assert record["input_inode"] == os.stat(src / "a.wav").st_ino  # the full test of an unchanged input from now on


def test_an_output_folder_of_a_newer_layout_is_refused(tmp_path, tiny_checkpoint, caplog):
    write(tmp_path / "a.wav", tone(0.5, 1))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LAYOUT_NAME).write_text('{"layout": 3}')
    assert cli("--model", tiny_checkpoint, tmp_path / "a.wav", "--out", tmp_path / "out") == 2
    assert "written by a newer hear-mwmae (layout 3); use that version, or another --out" in caplog.text


def test_find_jobs_gives_each_input_one_entry(tmp_path):
    write(tmp_path / "in" / "a.wav", tone(0.2, 1))
    (tmp_path / "in" / "notes.txt").write_text("x")
    os.symlink("loop.wav", tmp_path / "in" / "loop.wav")
    os.symlink("nowhere.wav", tmp_path / "in" / "broken.wav")
    plan = find_jobs([tmp_path / "in", tmp_path / "in" / "a.wav", tmp_path / "in" / "notes.txt"], "scene")
    assert sorted(Path(j.source).name for j in plan.jobs) == ["a.wav", "notes.txt"]  # named: attempted
    assert dict((Path(i).name, r) for i, r in plan.failed) == {
        "loop.wav": "error: unreadable: a symbolic link loop (the link leads back to itself)",
        "broken.wav": "error: unreadable: a broken symbolic link (to nowhere.wav, which does not exist)"}
    assert plan.not_audio == []


def test_an_unreadable_input_says_permission_denied(tmp_path, tiny_checkpoint, monkeypatch):
    """Before: libsndfile's "System error."."""
    from hear_mwmae import audio as audio_mod

    write(tmp_path / "in" / "locked.wav", tone(0.5, 1))
    write(tmp_path / "in" / "fine.wav", tone(0.5, 2))
    locked = str(canonical(tmp_path / "in" / "locked.wav"))
    if os.geteuid() != 0:  # a real permission problem (root reads anything)
        os.chmod(locked, 0)
    else:
        real_open = open

        def denied(path, *args, **kwargs):
            if os.fspath(path) == locked:
                raise PermissionError(13, "Permission denied", locked)
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(audio_mod, "open", denied, raising=False)
    out = tmp_path / "out"
    assert cli("--model", tiny_checkpoint, tmp_path / "in", "--out", out) == 1
    index = records(out)
    assert index[locked]["status"] == "error: unreadable: permission denied"
    assert index[str(canonical(tmp_path / "in" / "fine.wav"))]["status"] == "ok"
