"""Sharing on the Hugging Face Hub: save_pretrained -> load round trips for every kind of model
(converted MW-MAE and Audio-MAE fixtures, with decoder or classifier; the pre-trained demo; a
fine-tuned model), model cards read back with huggingface_hub, sha256 checks, push-to-hub up to
the upload call, the read path and `fetch` through a hand-built offline Hub cache, licences."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

hf = pytest.importorskip("huggingface_hub")

import hear_mwmae  # noqa: E402
from evaluation import report  # noqa: E402
from evaluation.synthetic import make_tasks  # noqa: E402
from hear_mwmae import cli, hub, model_card, registry  # noqa: E402
from hear_mwmae.checkpoint import CheckpointError, save_checkpoint  # noqa: E402
from hear_mwmae.convert import convert_source  # noqa: E402
from hear_mwmae.convert.audiomae import load_pickle_safely  # noqa: E402
from hear_mwmae.files import sha256_file  # noqa: E402
from hear_mwmae.finetune.recipes import get_recipe  # noqa: E402
from hear_mwmae.finetune.trainer import finetune  # noqa: E402
from hear_mwmae.sources import checkpoint_sha256, load_checkpoint  # noqa: E402

from conftest import REPO, load_npy  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
DEMO = REPO / "weights" / "demo-tiny.pt"
FILES = ["README.md", "config.json", "model.safetensors"]
BASE_ID = "someone/audiomae-tiny"  # the Hub id a user names for the fine-tuned model's base


@pytest.fixture(scope="module")
def models(fixture_checkpoint, converted, tmp_path_factory) -> dict[str, Path]:
    """kind -> a model of that kind: converted MW-MAE (.pt), the Audio-MAE authors' .pth files
    (Swin decoder; fine-tuned with a classifier; converted on load), the demo, and a model
    fine-tuned here from the converted Audio-MAE fixture (its results.json beside it)."""
    root = tmp_path_factory.mktemp("models")
    mw = converted("mwmae_tiny")
    amae = converted("audiomae_tiny")
    base = save_checkpoint(root / "amae.pt", amae.config, amae.state_dict, provenance=amae.provenance,
                           encoder_only=True)
    task = next(p for p in make_tasks(root / "tasks", clips_per_split=8) if p.name == "synth_scene_multiclass")
    recipe = get_recipe("cpu-small", ["batch_size=4", "epochs=1", "warmup_epochs=0.5", "num_workers=0",
                                      "base_lr=0.05"])
    finetune(recipe, str(base), task, root / "ft", device="cpu")
    return {"mwmae": save_checkpoint(root / "mwmae.pt", mw.config, mw.state_dict, provenance=mw.provenance),
            "audiomae-swin": fixture_checkpoint("audiomae_swin_tiny"),
            "audiomae-ft": fixture_checkpoint("audiomae_ft_tiny"),
            "demo": DEMO, "finetuned": root / "ft" / "model.pt"}


def audio() -> torch.Tensor:
    """Two clips: the Audio-MAE golden chirp (2 s) and 2 s of noise. (2, 32000)"""
    noise = torch.rand(32000, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return torch.stack([torch.from_numpy(load_npy("audiomae_tiny", "wav0_chirp_noise_2s"))[:32000], noise])


def outputs(ref: str | Path) -> dict[str, torch.Tensor]:
    model = hear_mwmae.load_model(str(ref), device="cpu")
    emb, ts = hear_mwmae.get_timestamp_embeddings(audio(), model)
    out = {"emb": emb, "ts": ts}
    if model.labels is not None:
        out["logits"] = hear_mwmae.get_logits(audio(), model)
    return out


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("kind,license,pipeline,family", [
    ("mwmae", "apache-2.0", "feature-extraction", "mw-mae"),
    ("audiomae-swin", "cc-by-nc-4.0", "feature-extraction", "audio-mae"),
    ("audiomae-ft", "cc-by-nc-4.0", "audio-classification", "audio-mae"),
    ("demo", None, "feature-extraction", "mw-mae"),
    ("finetuned", "cc-by-nc-4.0", "audio-classification", "audio-mae"),
])
def test_save_then_load_gives_the_same_weights_outputs_and_a_card(models, tmp_path, kind, license, pipeline, family):
    src = models[kind]
    before = load_checkpoint(str(src))
    extra = {"base_model": BASE_ID} if kind == "finetuned" else {}
    out = hear_mwmae.save_pretrained(str(src), tmp_path / "m", **extra)
    assert sorted(p.name for p in out.iterdir()) == FILES
    after = load_checkpoint(out)
    assert (after.config, after.encoder_only) == (before.config, before.encoder_only)
    assert after.state_dict.keys() == before.state_dict.keys()
    for key, value in before.state_dict.items():  # bitwise, dtype included
        assert after.state_dict[key].dtype == value.dtype and torch.equal(after.state_dict[key], value), key
    parts = {k.split(".")[0] for k in after.state_dict}
    assert parts == {"encoder"} | ({"decoder"} if not before.encoder_only else set()) \
        | ({"classifier"} if before.config.head is not None else set())
    theirs = outputs(out)
    for name, value in outputs(src).items():  # embeddings, timestamps and (with a head) logits
        assert torch.equal(theirs[name], value), name

    meta = json.loads((out / "config.json").read_text())
    assert meta["format"] == "hear-mwmae" and meta["layout_version"] == hub.LAYOUT_VERSION
    assert meta["weights"]["sha256"] == sha256_file(out / "model.safetensors")
    assert meta["config"] == json.loads(json.dumps(before.config.to_dict()))
    assert meta["labels"] == (list(before.config.head.labels) if before.config.head is not None else None)
    assert meta["saved_from"]["sha256"] == checkpoint_sha256(str(src))

    card = hf.ModelCard.load(out / "README.md")
    data = card.data
    assert data.library_name == "hear-mwmae" and data.pipeline_tag == pipeline and data.license == license
    assert {"audio", "self-supervised", "hear", family} <= set(data.tags)
    assert "```python\nimport hear_mwmae\nmodel = hear_mwmae.load_model(" in card.text
    assert f"{after.config.model.embedding_size}-d" in card.text and "## Provenance" in card.text
    if license == "cc-by-nc-4.0":
        assert "non-commercial" in card.text and "Audio-MAE authors' release" in card.text
    if kind == "mwmae":
        assert "the licence of the MW-MAE authors' release" in card.text
    if kind in ("mwmae", "audiomae-swin", "audiomae-ft"):
        assert before.provenance["source_sha256"] in card.text  # the authors' file and its hash
    if kind == "demo":
        assert "recipe `demo-tiny`" in card.text and "Not stated" in card.text and data.base_model is None
    if kind == "finetuned":
        results = json.loads((src.parent / "results.json").read_text())
        assert data.base_model == BASE_ID and data.datasets == ["synth_scene_multiclass"]
        metrics = {r.metric_name: r.metric_value for r in data.eval_results}
        assert metrics["test top-1 accuracy"] == round(results["test"]["top1_acc"], 4)
        assert {r.dataset_split for r in data.eval_results} == {"test"} and data.model_name == "m"
        assert "`high`, `low`, `mid`, `top`" in card.text and "recipe `cpu-small`" in card.text
        assert after.provenance["license"] == "CC-BY-NC-4.0"  # the Audio-MAE base's, carried by fine-tuning


def test_a_loaded_model_saves_its_encoder_and_classifier(models, tmp_path):
    model = hear_mwmae.load_model(str(models["audiomae-ft"]), device="cpu")
    out = hear_mwmae.save_pretrained(model, tmp_path / "m")
    assert load_checkpoint(out).encoder_only
    assert torch.equal(outputs(out)["logits"], outputs(models["audiomae-ft"])["logits"])
    with pytest.raises(ValueError, match="int8"):
        hear_mwmae.save_pretrained(hear_mwmae.load_model(str(models["mwmae"]), device="cpu", precision="int8"),
                                   tmp_path / "q")
    ft = load_checkpoint(str(models["audiomae-ft"]))  # no decoder, but marked otherwise (older fetches did)
    marked = hub.load_pretrained_dir(hear_mwmae.save_pretrained(
        dataclasses.replace(ft, encoder_only=False), tmp_path / "marked"))
    assert marked.encoder_only and marked.state_dict.keys() == ft.state_dict.keys()
    with pytest.raises(TypeError, match="model reference"):
        hear_mwmae.save_pretrained(torch.nn.Linear(2, 2), tmp_path / "x")
    # weights that do not fit their config are never published
    state = dict(ft.state_dict)
    state.pop("classifier.head.bias")
    with pytest.raises(CheckpointError, match="missing weights .*classifier.head.bias"):
        hear_mwmae.save_pretrained(dataclasses.replace(ft, state_dict=state), tmp_path / "y")
    state["classifier.head.bias"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"'classifier.head.bias' \(3,\) \(config: \(7,\)\)"):
        hear_mwmae.save_pretrained(dataclasses.replace(ft, state_dict=state), tmp_path / "y")
    assert not (tmp_path / "y").exists()


def test_encoder_only_folders_and_folders_that_are_not_empty(models, tmp_path, caplog):
    out = hear_mwmae.save_pretrained(str(models["mwmae"]), tmp_path / "m", encoder_only=True)
    ckpt = load_checkpoint(out)
    assert ckpt.encoder_only and not any(k.startswith("decoder.") for k in ckpt.state_dict)
    assert "not included (encoder only)" in (out / "README.md").read_text()
    with pytest.raises(FileExistsError, match="not empty .*--force"):
        hear_mwmae.save_pretrained(str(models["demo"]), out)
    assert load_checkpoint(out).config.model.embed_dim == ckpt.config.model.embed_dim  # untouched
    (out / ".gitattributes").write_text("*.safetensors filter=lfs\n")  # a clone of the Hub repo
    assert cli.main(["save-pretrained", str(models["demo"]), str(out), "--force", "--license", "MIT"]) == 0
    assert load_checkpoint(out).provenance["license"] == "MIT" and (out / ".gitattributes").is_file()
    assert hf.ModelCard.load(out / "README.md").data.license == "mit"
    assert "**MIT**, chosen by the weights' owner." in (out / "README.md").read_text()
    # our own pre-training relicensed Apache-2.0 is not the MW-MAE authors' release
    assert cli.main(["save-pretrained", str(models["demo"]), str(out), "--force", "--license", "Apache-2.0"]) == 0
    text = (out / "README.md").read_text()
    assert "**Apache-2.0**, chosen by the weights' owner." in text and "authors' release" not in text
    caplog.clear()
    assert cli.main(["save-pretrained", str(models["demo"]), str(tmp_path / "n"), "--repo-id", "no-owner"]) == 2
    assert "not a Hub repository id" in caplog.text and not (tmp_path / "n").exists()
    audio_file = tmp_path / "a.wav"
    audio_file.write_bytes(b"RIFF" + bytes(40))
    assert cli.main(["save-pretrained", str(audio_file), str(tmp_path / "n")]) == 2
    assert "an audio file" in caplog.text and "Traceback" not in caplog.text


# ----------------------------------------------------------------------------- integrity
def test_a_changed_weights_file_fails_its_sha256_and_an_edited_config_is_refused(models, tmp_path, caplog):
    out = hear_mwmae.save_pretrained(str(models["audiomae-ft"]), tmp_path / "m")
    weights = out / "model.safetensors"
    digest = sha256_file(weights)
    hear_mwmae.load_model(str(out), device="cpu", sha256=digest)  # intact and pinned: loads
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last tensor: the file still parses
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"does not match the pinned {digest}"):
        hear_mwmae.load_model(str(out), device="cpu", sha256=digest)
    with pytest.raises(CheckpointError, match="recorded in config.json: the file changed after it was saved"):
        hear_mwmae.load_model(str(out), device="cpu")
    assert cli.main(["info", str(out)]) == 2 and "recorded in config.json" in caplog.text

    out = hear_mwmae.save_pretrained(str(models["audiomae-ft"]), tmp_path / "n")
    meta = json.loads((out / "config.json").read_text())
    for change, message in ((lambda m: m["labels"].reverse(), "labels differ"),
                            (lambda m: m["config"]["head"].update(multi_label=False), "config differ"),
                            (lambda m: m.update(layout_version=99), "layout_version 99 unsupported")):
        edited = json.loads(json.dumps(meta))
        change(edited)
        (out / "config.json").write_text(json.dumps(edited))
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(out)


# ----------------------------------------------------------------------------- HEAR results in the card
def hear_results(folder: Path, model: Path) -> Path:
    """An evaluation.run results.json for `model` (two registered tasks, two seeds each)."""
    per_task = {"esc50-v2.0.0-full": [{"seed": s, "score": v, "metric": "top1_acc"} for s, v in ((0, .5), (1, .6))],
                "fsd50k-v1.0-full": [{"seed": s, "score": v, "metric": "mAP"} for s, v in ((0, .2), (1, .3))]}
    summary = report.summarize(per_task, {"checkpoint": str(model), "checkpoint_sha256": checkpoint_sha256(str(model)),
                                          "model": report.model_facts(model), "grid": "fast", "seeds": 2})
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(summary))
    return folder


def test_eval_results_put_the_hear_table_beside_the_papers_numbers(models, tmp_path, caplog):
    results = hear_results(tmp_path / "eval", models["mwmae"])
    out = tmp_path / "m"
    assert cli.main(["save-pretrained", str(models["mwmae"]), str(out), "--eval-results", str(results)]) == 0
    card = hf.ModelCard.load(out / "README.md")
    hear = {r.dataset_type: r for r in card.data.eval_results}
    assert hear["esc50-v2.0.0-full"].metric_value == 55.0 and hear["esc50-v2.0.0-full"].metric_type == "accuracy"
    assert hear["fsd50k-v1.0-full"].metric_value == 25.0 and card.data.model_name == "m"
    assert "| ESC-50 | top1_acc | 2 | 55.0 ± 63.5 | 81.2 ± 0.4 | 81.6 ± 0.4 | -26.2 |" in card.text
    assert "| FSD50K | mAP | 2 | 25.0 ± 63.5 | 51.2 ± 0.2 | 51.3 ± 0.1 | -26.2 |" in card.text
    other = hear_results(tmp_path / "eval-demo", DEMO)  # numbers of another model
    assert cli.main(["save-pretrained", str(models["mwmae"]), str(tmp_path / "x"), "--eval-results", str(other)]) == 2
    assert "not this model" in caplog.text and not (tmp_path / "x").exists()
    assert cli.main(["save-pretrained", str(models["mwmae"]), str(tmp_path / "y"), "--eval-results",
                     str(tmp_path / "nowhere")]) == 2
    assert "cannot read evaluation results" in caplog.text


# ----------------------------------------------------------------------------- upload (mocked at the API)
@pytest.fixture
def fake_hub(monkeypatch):
    """huggingface_hub.HfApi's create_repo / create_branch / upload_folder replaced by recorders;
    upload_folder records the files of the folder as they are at the call."""
    calls: list[tuple] = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw))

    def create_branch(self, repo_id, **kw):
        calls.append(("create_branch", repo_id, kw))

    def upload_folder(self, **kw):
        folder = Path(kw["folder_path"])
        calls.append(("upload_folder", kw, {p.name: p.read_bytes() for p in folder.iterdir()}))
        return types.SimpleNamespace(commit_url=f"https://huggingface.co/{kw['repo_id']}/commit/0123")

    for name, fn in (("create_repo", create_repo), ("create_branch", create_branch), ("upload_folder", upload_folder)):
        monkeypatch.setattr(hf.HfApi, name, fn)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    return calls


def test_push_to_hub_builds_the_folder_and_uploads_exactly_its_files(models, fake_hub, tmp_path, capsys):
    src = str(models["finetuned"])
    assert cli.main(["push-to-hub", src, "someone/tiny-tagger", "--private", "--revision", "dev",
                     "--base-model", BASE_ID]) == 0
    assert capsys.readouterr().out.strip() == "https://huggingface.co/someone/tiny-tagger/commit/0123"
    (_, repo, create), (_, repo2, branch), (_, upload, files) = fake_hub
    token = "hf_test_token"
    assert (repo, create) == ("someone/tiny-tagger", {"private": True, "exist_ok": True, "token": token})
    assert (repo2, branch) == ("someone/tiny-tagger", {"branch": "dev", "exist_ok": True, "token": token})
    assert {k: v for k, v in upload.items() if k not in ("folder_path", "commit_message")} == {
        "repo_id": "someone/tiny-tagger", "allow_patterns": ["model.safetensors", "config.json", "README.md"],
        "revision": "dev", "token": token}
    assert sorted(files) == FILES and not Path(upload["folder_path"]).exists()  # built in a temporary folder
    assert 'hear_mwmae.load_model("hf://someone/tiny-tagger")' in files["README.md"].decode()
    uploaded = tmp_path / "uploaded"
    uploaded.mkdir()
    for name, data in files.items():
        (uploaded / name).write_bytes(data)
    local = hear_mwmae.save_pretrained(src, tmp_path / "m", repo_id="someone/tiny-tagger", base_model=BASE_ID)
    a, b = load_checkpoint(uploaded), load_checkpoint(local)  # intact (its own sha256) and what save-pretrained writes
    assert a.provenance == b.provenance and all(torch.equal(v, b.state_dict[k]) for k, v in a.state_dict.items())
    same_card = (uploaded / "README.md").read_text().replace(sha256_file(uploaded / "model.safetensors"), "SHA")
    assert same_card == (local / "README.md").read_text().replace(sha256_file(local / "model.safetensors"), "SHA")

    fake_hub.clear()  # a folder made before: uploaded as it is, public unless asked, to main
    assert hear_mwmae.push_to_hub(str(local), "someone/tiny-tagger") == \
        "https://huggingface.co/someone/tiny-tagger/commit/0123"
    assert [c[0] for c in fake_hub] == ["create_repo", "upload_folder"] and fake_hub[0][2]["private"] is None
    assert fake_hub[1][1]["folder_path"] == str(local) and fake_hub[1][1]["revision"] is None


def test_push_to_hub_refuses_before_uploading(models, fake_hub, tmp_path, monkeypatch, caplog):
    local = hear_mwmae.save_pretrained(str(models["mwmae"]), tmp_path / "m")
    assert cli.main(["push-to-hub", str(local), "someone/x", "--license", "MIT"]) == 2
    assert "apply when building a folder" in caplog.text
    weights = local / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert cli.main(["push-to-hub", str(local), "someone/x"]) == 2 and "recorded in config.json" in caplog.text
    assert cli.main(["push-to-hub", str(models["mwmae"]), "not a repo"]) == 2
    monkeypatch.setattr(hf, "get_token", lambda: None)
    monkeypatch.delenv("HF_TOKEN")
    caplog.clear()
    assert cli.main(["push-to-hub", str(models["mwmae"]), "someone/x"]) == 2
    assert "no Hugging Face token: log in with `hf auth login`" in caplog.text and "Traceback" not in caplog.text
    assert fake_hub == []  # nothing reached the Hub

    def failing_upload(self, **kw):
        raise OSError("503 Service Unavailable\n(details)")

    monkeypatch.setattr(hf.HfApi, "upload_folder", failing_upload)
    with pytest.raises(hub.HubError, match=r"upload to someone/x failed: OSError: 503 Service Unavailable$"):
        hear_mwmae.push_to_hub(str(models["mwmae"]), "someone/x", token="hf_x")


# ----------------------------------------------------------------------------- reading through the Hub's cache
HUB_SCRIPT = r"""
import dataclasses, json, sys, torch
import hear_mwmae
from hear_mwmae import cli, registry
local, commit, digest, release_json = sys.argv[1:5]
wave = torch.rand(1, 40000, generator=torch.Generator().manual_seed(0)) * 2 - 1
want = hear_mwmae.get_timestamp_embeddings(wave, hear_mwmae.load_model(local, device="cpu"))[0]
res = {}
for ref in ("hf://someone/tiny-hub", f"hf://someone/tiny-hub@{commit}"):
    got = hear_mwmae.get_timestamp_embeddings(wave, hear_mwmae.load_model(ref, device="cpu", sha256=digest))[0]
    res[ref] = bool(torch.equal(got, want))
try:
    hear_mwmae.load_model("hf://someone/tiny-hub", sha256="0" * 64)
    res["wrong pin"] = "loaded"
except Exception as exc:
    res["wrong pin"] = f"{type(exc).__name__}: {exc}"
model = registry.ReleasedModel(name="tiny-hub", title="tiny", run_dir="mwmae_tiny_run1", hear_config="-",
                               release_model=json.load(open(release_json))["model"], license="Apache-2.0",
                               datasets=("AudioSet",), hub_repo="someone/tiny-hub", hub_revision=commit,
                               hub_sha256=digest)
registry.MODELS[model.name] = model
res["fetch"] = registry.fetch(model.name)
by_name = hear_mwmae.load_model(model.name, device="cpu")
res["by name"] = bool(torch.equal(hear_mwmae.get_timestamp_embeddings(wave, by_name)[0], want))
registry.MODELS["tiny-bad"] = dataclasses.replace(model, name="tiny-bad", hub_sha256="0" * 64)
try:
    registry.fetch("tiny-bad")
    res["bad pin"] = "fetched"
except registry.FetchError as exc:
    res["bad pin"] = str(exc)
registry.MODELS["tiny-gone"] = dataclasses.replace(model, name="tiny-gone", hub_revision="v9")
res["gone rc"] = cli.main(["fetch", "tiny-gone"])
res["push rc"] = cli.main(["push-to-hub", local, "someone/x"])
print(json.dumps(res))
"""


def test_hf_references_and_fetch_read_our_layout_from_the_hub_cache_offline(models, fixture_checkpoint, tmp_path):
    local = hear_mwmae.save_pretrained(str(models["mwmae"]), tmp_path / "m", repo_id="someone/tiny-hub")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--someone--tiny-hub"
    shutil.copytree(local, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    digest = sha256_file(local / "model.safetensors")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           registry.CACHE_ENV: str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    for key in ("HF_HUB_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH"):
        env.pop(key, None)
    release = fixture_checkpoint("mwmae_tiny") / "config.json"
    proc = subprocess.run([sys.executable, "-c", HUB_SCRIPT, str(local), commit, digest, str(release)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["hf://someone/tiny-hub"] and res[f"hf://someone/tiny-hub@{commit}"]
    assert res["wrong pin"].startswith("CheckpointError") and "does not match the pinned" in res["wrong pin"]
    record = res["fetch"]
    assert record["source_files"] == {"config.json": sha256_file(local / "config.json"), "model.safetensors": digest}
    assert record["license"] == "Apache-2.0" and record["hub_repo"] == "someone/tiny-hub"
    assert record["source_url"] == "https://huggingface.co/someone/tiny-hub" and res["by name"]
    fetched = load_checkpoint(tmp_path / "cache" / "tiny-hub.pt")
    assert fetched.provenance["license"] == "Apache-2.0" and fetched.provenance["registry_name"] == "tiny-hub"
    assert "pins " + "0" * 64 in res["bad pin"]
    assert res["gone rc"] == 2 and "could not download someone/tiny-hub@v9" in proc.stderr
    assert "--from-authors tiny-gone" in proc.stderr
    assert res["push rc"] == 2 and "no Hugging Face token" in proc.stderr


# ----------------------------------------------------------------------------- licences
def test_converters_and_the_registry_carry_licences(converted, fixture_checkpoint, tmp_path, capsys):
    assert converted("mwmae_tiny").provenance["license"] == "Apache-2.0"
    assert converted("audiomae_tiny").provenance["license"] == "CC-BY-NC-4.0"
    timm = tmp_path / "timm"  # the timm / Hub copy of the fine-tuned fixture
    timm.mkdir()
    from safetensors.torch import save_file

    state = load_pickle_safely(fixture_checkpoint("audiomae_ft_tiny"))["model"]
    save_file({k: v.contiguous() for k, v in state.items()}, timm / "model.safetensors")
    (timm / "config.json").write_text(json.dumps({"architecture": "vit_t", "num_classes": 7, "global_pool": "avg",
                                                  "model_args": {"embed_dim": 96, "depth": 2, "num_heads": 3}}))
    assert convert_source(timm).provenance["license"] == "CC-BY-NC-4.0" and not hub.is_pretrained_dir(timm)

    licences = {m.name: m.license for m in registry.MODELS.values()}
    assert licences == {"mwmae-base-4x16-4l": "Apache-2.0", "mae-base-4x16": "Apache-2.0",
                        "audiomae-base-as2m": "CC-BY-NC-4.0", "audiomae-base-as2m-ft": "CC-BY-NC-4.0"}
    assert cli.main(["fetch", "--list", "--cache-dir", str(tmp_path / "cache")]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "CC-BY-NC-4.0 (non-commercial)" in lines["audiomae-base-as2m-ft"] and "Apache-2.0" in lines["mae-base-4x16"]

    pt = save_checkpoint(tmp_path / "a.pt", converted("audiomae_tiny").config, converted("audiomae_tiny").state_dict,
                         provenance=converted("audiomae_tiny").provenance)
    assert cli.main(["info", str(pt)]) == 0
    assert json.loads(capsys.readouterr().out)["license"] == "CC-BY-NC-4.0 (non-commercial)"
    assert cli.main(["info", str(DEMO)]) == 0 and json.loads(capsys.readouterr().out)["license"] == "not stated"


def test_licence_and_base_model_from_older_provenance():
    """Files written before provenances carried `license`: the released name, the converter's
    source, or the base model's provenance tells it."""
    assert model_card.license_of({"registry_name": "audiomae-base-as2m"}) == "CC-BY-NC-4.0"
    assert model_card.license_of({"source": "mwmae-jax-official run directory"}) == "Apache-2.0"
    tuned = {"source": "hear_mwmae.finetune", "base_model": "hf://owner/amae@v1", "task": "/data/esc50 (test fold 3)",
             "base_provenance": {"source": "timm / Hugging Face Hub Audio-MAE", "registry_name": "audiomae-base-as2m"}}
    assert model_card.license_of(tuned) == "CC-BY-NC-4.0" and model_card.license_of({"source": "mine"}) is None
    assert model_card.base_model_of(tuned) == "owner/amae" and model_card.base_model_of({"base_model": "x.pt"}) is None
    assert model_card.datasets_of(tuned) == ["esc50", "AudioSet"]


def test_the_repository_states_its_licence():
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the hear-mwmae authors" in text
    assert 'license = { text = "MIT" }' in (REPO / "pyproject.toml").read_text()
