"""Copy the golden fixtures the tests need from ../shared/fixtures into tests/golden/, trimmed.

    python scripts/vendor_golden.py [--fixtures ../shared/fixtures] [--out tests/golden]

What is kept is listed in KEEP below: per fixture the reference arrays the tests assert on
(fewer clips, Audio-MAE decoder predictions at every 4th patch), its checkpoint (every
array, plus the non-array entries as JSON so that `tests/golden.write_checkpoint` rebuilds
the authors' file), and the analyses' maps, PWCCA inputs and reference JSON. Sensitivity
tables, READMEs and float64 rechecks stay in ../shared.

Arrays that tests/golden/replay.py regenerates are not stored when the regenerated array is
the original bit for bit: the Audio-MAE checkpoints (the authors' seeded initialisation plus
the fixtures' perturbation; cls_token / mask_token are stored), the Flax checkpoints' biases,
LayerNorm scales and position embeddings (with the XOR of the original bits where XLA's
float32 rounding differs, when that is smaller), the analyses' random attention maps, and
references that are another kept reference rearranged. Anything that does not regenerate
exactly is stored (per array; the summary counts each kind). Finally every kept array is
read back through tests/golden and compared with the original, and every checkpoint is
rebuilt and compared. See tests/golden/__init__.py for the format; rerunning this script
on the same fixtures writes the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import re
import sys
import tempfile
import time
import zipfile
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
READER = REPO / "tests" / "golden" / "__init__.py"
MW_WAVES = ("wav1_tones_noise_3p37s", "wav3_edge_200frames_1p99s")  # 2 chunks (reflect pad); exactly 1 chunk
DECODER = ("decoder_ids_keep", "decoder_ids_restore", "decoder_latent", "decoder_loss", "decoder_mask",
           "decoder_mask_noise", "decoder_pred")
AM_DECODER = tuple(k for k in DECODER if k != "decoder_pred") + ("decoder_pred_every4",)

KEEP: dict[str, tuple[str, ...]] = {
    "inputs": (
        # waveforms and stored model inputs shared by several fixtures
        *(f"mwmae_tiny/{w}" for w in MW_WAVES), "mwmae_tiny/decoder_input_x",
        "audiomae_tiny/wav0_chirp_noise_2s", "audiomae_tiny/wav2_bursts_12p7s", "audiomae_tiny/wav3_clicks_0p5s",
        "audiomae_tiny/wav0_chirp_noise_2s.fbank_norm", "audiomae_tiny/wav1_tones_dc_10p24s.fbank_norm",
    ),
    "mwmae_tiny": (
        "frontend_mel_fbanks", "frontend_window", "decoder_target",
        *(f"{w}.{k}" for w in MW_WAVES for k in ("logmel_raw", "logmel_norm", "timestamp_embeddings",
                                                  "scene_embeddings", "timestamps")),
        *DECODER,
    ),
    "mae_cls_tiny": (*(f"{w}.{k}" for w in MW_WAVES for k in ("timestamp_embeddings", "scene_embeddings")),
                     *DECODER),
    "mwmae_shift_tiny": (*(f"{w}.{k}" for w in MW_WAVES for k in ("timestamp_embeddings", "scene_embeddings")),
                         *DECODER),
    "audiomae_tiny": (
        "fbank_mel_banks", "wav0_chirp_noise_2s.fbank_raw", "wav3_clicks_0p5s.fbank_raw",
        "wav3_clicks_0p5s.fbank_norm", "wav0_chirp_noise_2s.encoder_tokens",
        *(f"{w}.hear_{k}" for w in ("wav0_chirp_noise_2s", "wav2_bursts_12p7s", "wav3_clicks_0p5s")
          for k in ("timestamp_embeddings", "scene_embeddings", "timestamps")),
        *AM_DECODER,
        *(k.replace("decoder_", "decoder2d_") for k in AM_DECODER if k != "decoder_mask_noise"),
        "decoder2d_noise_t", "decoder2d_noise_f",
    ),
    "audiomae_swin_tiny": (
        "wav0_chirp_noise_2s.encoder_tokens",
        *(f"wav0_chirp_noise_2s.hear_{k}" for k in ("timestamp_embeddings", "scene_embeddings", "timestamps")),
        *AM_DECODER,
    ),
    # the fine-tuned classifier: outputs on the four clips, and one step of the authors' fine-tuning
    # (every gradient and every parameter after it: the `ft_grads/*`, `ft_params_after_step/*` entries)
    "audiomae_ft_tiny": (
        *(f"{w}.{k}" for w in ("wav0_chirp_noise_2s", "wav1_tones_dc_10p24s", "wav2_bursts_12p7s", "wav3_clicks_0p5s")
          for k in ("logits", "pooled")),
        "wav0_chirp_noise_2s.encoder_tokens", "wav3_clicks_0p5s.fbank_norm",
        "ft_noise_t", "ft_noise_f", "ft_targets", "ft_loss", "ft_logits_masked", "ft_grads/*", "ft_params_after_step/*",
    ),
}
FT_STEP_NPZ = ("ft_grads", "ft_params_after_step")  # per-parameter arrays of the fine-tuning step
FT_JSON = ("ft_param_groups.json", "ft_param_groups_vit_b.json")
ANALYSES_JSON = ("attention/expected.json", "pwcca/results.json", "paper/paper_tables.json",
                 "paper/overall_score_fit.json")
AUDIOMAE_IMG_SIZE = (1024, 128)  # main_pretrain's audio input (frames, mel bins): patch grid (128/p, 1024/p)
RANDOM_MAPS = {"seed": 20240507, "taus": [2.0, 50.0], "batch": 2, "grid": [50, 5]}  # analyses/README.txt


def _load_reader() -> Any:
    """tests/golden (the reader and replay.py) as the package `golden` (the one already
    imported, under pytest)."""
    if "golden" in sys.modules and Path(sys.modules["golden"].__file__).resolve() == READER:
        return sys.modules["golden"]
    spec = importlib.util.spec_from_file_location(
        "golden", READER,
        submodule_search_locations=[str(REPO / "tests" / "golden")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["golden"] = module
    spec.loader.exec_module(module)
    return module


golden = _load_reader()
replay = golden.replay


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.ascontiguousarray(a).tobytes() == b.tobytes()


def _shuffle(value: np.ndarray) -> tuple[np.ndarray, bool]:
    """(stored uint8 / raw array, shuffled?): multi-byte numbers are stored byte-shuffled."""
    flat = value.reshape(-1)
    if value.dtype.kind in "fiuc" and value.dtype.itemsize > 1:
        return flat.view(np.uint8).reshape(-1, value.dtype.itemsize).T.reshape(-1), True
    return flat, False


class Bundle:
    """Arrays for one npz, with the manifest entries that describe them."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self.manifest: dict[str, list[Any]] = {}
        self.derived: dict[str, dict[str, Any]] = {}
        self.counts: Counter = Counter()

    def add(self, key: str, value: np.ndarray, kind: str = "stored") -> None:
        value = np.array(value, order="C")  # (not ascontiguousarray: it makes 0-d arrays 1-d)
        stored, shuffled = _shuffle(value)
        self.arrays[key.replace("/", "__")] = stored
        self.manifest[key] = [value.dtype.str, list(value.shape), shuffled]
        self.counts[kind] += 1

    def derive(self, key: str, original: np.ndarray, entry: dict[str, Any], regenerated: np.ndarray | None,
               xor: bool = False) -> None:
        """Record `key` as regenerated by `entry` if `regenerated` is `original` bit for bit; with
        `xor`, store the XOR of the bits when that compresses smaller than the array; else store it."""
        original = np.array(original, order="C")
        if regenerated is not None and _same_bits(regenerated, original):
            self.derived[key] = {**entry, "crc32": replay.crc32(original)}
            self.counts["regenerated"] += 1
            return
        if xor and regenerated is not None and regenerated.shape == original.shape \
                and regenerated.dtype == original.dtype:
            bits = np.dtype(f"u{original.dtype.itemsize}")
            residual = original.view(bits) ^ np.ascontiguousarray(regenerated).view(bits)
            if _packed_size(residual) < _packed_size(original):
                self.add(f"xor/{key}", residual, kind="xor")
                self.derived[key] = {**entry, "xor": f"xor/{key}", "crc32": replay.crc32(original)}
                return
        self.add(key, original)

    def write(self, out: Path, name: str, extra: dict[str, Any]) -> int:
        """<name>.npz (deflate level 9, fixed timestamps: same input, same bytes) and <name>.json."""
        with zipfile.ZipFile(out / f"{name}.npz", "w") as zf:
            for key, value in self.arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, value, allow_pickle=False)
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                zf.writestr(info, buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
        manifest = {**extra, "arrays": self.manifest, "derived": self.derived}
        (out / f"{name}.json").write_text(dump_manifest(manifest))
        return (out / f"{name}.npz").stat().st_size + (out / f"{name}.json").stat().st_size


def golden_copy(bundle: Bundle, key: str) -> np.ndarray:
    """An array already added to `bundle` (stored, not derived), as the reader will return it."""
    dtype, shape, shuffled = bundle.manifest[key]
    stored = bundle.arrays[key.replace("/", "__")]
    return golden.unshuffle(stored, dtype, shape) if shuffled else stored.reshape(shape)


def _packed_size(value: np.ndarray) -> int:
    return len(zlib.compress(_shuffle(np.ascontiguousarray(value))[0].tobytes(), 9))


def load_reference(fixtures: Path, fixture: str, key: str) -> np.ndarray:
    group, _, param = key.partition("/")
    if group in FT_STEP_NPZ:
        with np.load(fixtures / fixture / f"{group}.npz") as arrays:
            return arrays[param]
    if key.endswith("_every4"):
        return np.load(fixtures / fixture / f"{key[:-len('_every4')]}.npy")[:, ::4]
    return np.load(fixtures / fixture / f"{key}.npy")


def _scale(rule: str) -> float:
    """'+0.05*N(0,1)' / '1+0.1*N' (perturbation_rules.json) -> 0.05 / 0.1."""
    match = re.fullmatch(r"1?\+([0-9.]+)\*N(\(0,1\))?", rule)
    if match is None:
        raise ValueError(f"unknown perturbation rule {rule!r}")
    return float(match.group(1))


def perturbation(fixture_dir: Path) -> tuple[int, dict[str, float]]:
    """(numpy seed, per-parameter noise scale) of a fixture's perturbation."""
    meta = json.loads((fixture_dir / "meta.json").read_text())
    rules = json.loads((fixture_dir / "perturbation_rules.json").read_text())
    return meta["perturbation"]["numpy_default_rng_seed"], {k: _scale(v) for k, v in rules.items()}


def flax_checkpoint(bundle: Bundle, fixture_dir: Path) -> dict[str, Any]:
    """Every array of the msgpack train state into the bundle (parameters replayed where
    possible); the tree skeleton as JSON."""
    import msgpack

    run_dir = fixture_dir / "ckpt"
    (ckpt,) = sorted(run_dir.glob("checkpoint_*"))
    raw = ckpt.read_bytes()
    tree = msgpack.unpackb(raw, raw=False, strict_map_key=False, ext_hook=lambda c, d: msgpack.ExtType(c, d))
    model_args = json.loads((run_dir / "config.json").read_text())["model"]["model_args"]
    grid = [i // p for i, p in zip(model_args["img_size"], model_args["patch_size"])]
    seed, scales = perturbation(fixture_dir)
    leaves: dict[str, np.ndarray] = {}

    def collect(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                collect(v, f"{path}/{k}" if path else k)
        elif isinstance(node, msgpack.ExtType) and node.code == 1:
            shape, dtype, data = msgpack.unpackb(node.data, raw=False)
            leaves[path] = np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)

    collect(tree["params"], "")
    params = {path: [list(v.shape), scales[path]] for path, v in leaves.items()}
    replayed = replay.flax_params({k: tuple(s) for k, (s, _) in params.items()}, seed, scales, tuple(grid))

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, msgpack.ExtType):
            if node.code == 1:
                shape, dtype, data = msgpack.unpackb(node.data, raw=False)
                value = np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)
                if path.startswith("params/"):
                    param = path[len("params/"):]
                    bundle.derive(f"ckpt/{path}", value, {"recipe": "checkpoint", "param": param},
                                  replayed[param], xor=True)
                else:
                    bundle.add(f"ckpt/{path}", value)
                return {"__array__": f"ckpt/{path}"}
            if node.code == 3:
                dtype, data = msgpack.unpackb(node.data, raw=False)
                bundle.add(f"ckpt/{path}", np.frombuffer(data, dtype=np.dtype(dtype)).reshape(()))
                return {"__scalar__": f"ckpt/{path}"}
            raise ValueError(f"unknown msgpack extension {node.code} at {path}")
        if isinstance(node, dict):
            return {k: walk(v, f"{path}/{k}" if path else k) for k, v in node.items()}
        return node

    return {"layout": "flax", "file": ckpt.name, "sha256": hashlib.sha256(raw).hexdigest(),
            "config_json": (run_dir / "config.json").read_text(), "tree": walk(tree, ""),
            "replay": {"kind": "flax", "perturb_seed": seed, "grid": grid, "params": params}}


def audiomae_checkpoint(bundle: Bundle, fixture_dir: Path) -> dict[str, Any]:
    """The model's tensors into the bundle (replayed where possible); optimizer / scaler /
    epoch / args as JSON."""
    import torch

    (ckpt,) = sorted((fixture_dir / "ckpt").glob("checkpoint-*.pth"))
    with torch.serialization.safe_globals([argparse.Namespace]):
        obj = torch.load(ckpt, map_location="cpu", weights_only=True)
    meta = json.loads((fixture_dir / "meta.json").read_text())
    init_seed = meta["init_seed"]
    seed, scales = perturbation(fixture_dir)
    model = {k: v.numpy() for k, v in obj["model"].items()}
    patch = model["patch_embed.proj.weight"].shape[-1]
    grid = [AUDIOMAE_IMG_SIZE[1] // patch, AUDIOMAE_IMG_SIZE[0] // patch]
    params = {k: [list(v.shape), scales[k]] for k, v in model.items()}
    if meta["spec"]["kind"] == "finetune":  # a models_vit classifier: replay.py regenerates pre-training MAEs only
        for key, value in model.items():
            bundle.add(f"ckpt/{key}", value)
        replay_spec = None
    else:
        replayed = replay.audiomae_state_dict({k: v.shape for k, v in model.items()}, init_seed, seed, scales,
                                              tuple(grid))
        for key, value in model.items():
            bundle.derive(f"ckpt/{key}", value, {"recipe": "checkpoint", "param": key}, replayed[key])
        replay_spec = {"kind": "audiomae", "init_seed": init_seed, "perturb_seed": seed, "grid": grid,
                       "params": params}
    return {"layout": "audiomae", "file": ckpt.name, "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(),
            "top_level_keys": list(obj), "model_keys": list(obj["model"]), "optimizer": tagged(obj["optimizer"]),
            "epoch": obj["epoch"], "scaler": tagged(obj["scaler"]), "args": tagged(vars(obj["args"])),
            "replay": replay_spec}


def rearrangement(key: str, kept: set[str], get: Callable[[str], np.ndarray],
                  patch: list[int] | None) -> dict[str, Any] | None:
    """The recipe of a reference that is another kept reference rearranged, or None."""
    wave = key.removesuffix(".hear_timestamp_embeddings")
    if wave != key and f"{wave}.encoder_tokens" in kept:
        tokens, emb = get(f"{wave}.encoder_tokens"), get(key)
        n_f = emb.shape[-1] // tokens.shape[-1]
        return {"recipe": "hear_from_tokens", "tokens": f"{wave}.encoder_tokens",
                "grid": [(tokens.shape[1] - 1) // n_f, n_f], "steps": emb.shape[1]}
    if key == "decoder_target" and "decoder_input_x" in kept and patch is not None:
        return {"recipe": "patchify", "input": "decoder_input_x", "patch": patch}
    return None


def tagged(obj: Any) -> Any:
    """JSON-able copy of a checkpoint entry: tuples tagged {"__tuple__": [...]} (the reader
    turns them back), so that the rebuilt file holds equal objects (AdamW's betas)."""
    if isinstance(obj, tuple):
        return {"__tuple__": [tagged(v) for v in obj]}
    if isinstance(obj, list):
        return [tagged(v) for v in obj]
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError(f"checkpoint entry with non-string keys: {list(obj)[:5]}")
        return {k: tagged(v) for k, v in obj.items()}
    return obj


def references(fixtures: Path) -> dict[str, dict[str, np.ndarray]]:
    """bundle -> key -> the original array, for every array KEEP and the analyses keep."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, keep in KEEP.items():
        refs = out.setdefault(name, {})
        for item in keep:
            if item.endswith("/*"):  # every array of one of the fine-tuning step's npz files
                with np.load(fixtures / name / f"{item[:-2]}.npz") as arrays:
                    refs.update({f"{item[:-2]}/{k}": arrays[k] for k in arrays.files})
                continue
            fixture, key = item.split("/", 1) if name == "inputs" else (name, item)
            refs[key] = load_reference(fixtures, fixture, key)
    root = fixtures / "analyses"
    refs = out.setdefault("analyses", {})
    with np.load(root / "attention" / "maps_structured.npz") as structured:
        refs["attention/maps_structured"] = structured["attn"]
    refs["attention/maps_random"] = np.load(root / "attention" / "maps_random.npy")
    with np.load(root / "attention" / "per_query.npz") as per_query:
        for key in per_query.files:
            refs[f"attention/per_query/{key}"] = per_query[key]
    for path in sorted((root / "pwcca" / "inputs").glob("*.npy")):
        refs[f"pwcca/inputs/{path.stem}"] = np.load(path)
    return out


def check_checkpoint(name: str, rebuilt: Path, fixtures: Path) -> None:
    """Raise unless the checkpoint `golden.write_checkpoint` rebuilt equals the fixture's file:
    Flax byte for byte, Audio-MAE the same objects (tensors bit for bit, in file order)."""
    import torch

    run_dir = fixtures / name / "ckpt"
    if (run_dir / "config.json").exists():
        (orig,) = sorted(run_dir.glob("checkpoint_*"))
        if (rebuilt / orig.name).read_bytes() != orig.read_bytes() or \
                (rebuilt / "config.json").read_text() != (run_dir / "config.json").read_text():
            raise RuntimeError(f"{name}: rebuilt run directory differs from {run_dir}")
        return
    (orig_path,) = sorted(run_dir.glob("checkpoint-*.pth"))
    with torch.serialization.safe_globals([argparse.Namespace]):
        new, orig = torch.load(rebuilt, weights_only=True), torch.load(orig_path, weights_only=True)
    if list(new) != list(orig) or list(new["model"]) != list(orig["model"]) or any(
            not _same_bits(new["model"][k].numpy(), v.numpy()) for k, v in orig["model"].items()):
        raise RuntimeError(f"{name}: rebuilt model state differs from {orig_path}")
    if {k: v for k, v in new.items() if k != "model"} != {k: v for k, v in orig.items() if k != "model"}:
        raise RuntimeError(f"{name}: rebuilt optimizer / epoch / scaler / args differ from {orig_path}")


def verify(out: Path, originals: dict[str, dict[str, np.ndarray]], fixtures: Path) -> float:
    """Read every kept array back through tests/golden and rebuild every checkpoint; returns
    the rebuild time in seconds. Raises on any difference."""
    golden.FOLDER = out
    for name, arrays in originals.items():
        for key, value in arrays.items():
            if not _same_bits(golden.array(name, key), np.array(value, order="C")):
                raise RuntimeError(f"{name}/{key}: read back differs from the original")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        rebuilt = {name: golden.write_checkpoint(name, Path(tmp) / name)
                   for name in golden.FLAX_FIXTURES + golden.AUDIOMAE_FIXTURES + golden.FINETUNE_FIXTURES}
        seconds = time.perf_counter() - start
        for name, path in rebuilt.items():
            check_checkpoint(name, path, fixtures)
    return seconds


def dump_manifest(manifest: dict[str, Any]) -> str:
    """JSON with one line per item of each top-level object (readable diffs, compact)."""
    def compact(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"))

    lines = []
    for key, value in manifest.items():
        if isinstance(value, dict) and value:
            items = ",\n".join(f"  {json.dumps(k)}: {compact(v)}" for k, v in value.items())
            lines.append(f" {json.dumps(key)}: {{\n{items}\n }}")
        else:
            lines.append(f" {json.dumps(key)}: {compact(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fixtures", type=Path, default=REPO.parent / "shared" / "fixtures")
    p.add_argument("--out", type=Path, default=REPO / "tests" / "golden")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    originals = references(args.fixtures)
    total = 0
    for name in (*KEEP, "analyses"):
        refs, bundle = originals[name], Bundle()
        fixture_dir = args.fixtures / name
        config = fixture_dir / "ckpt" / "config.json"
        patch = json.loads(config.read_text())["model"]["model_args"]["patch_size"] if config.exists() else None
        available = set(refs) | (set(originals["inputs"]) if name != "inputs" else set())

        def get(key: str) -> np.ndarray:
            return refs[key] if key in refs else originals["inputs"][key]

        after_step = {k: v for k, v in refs.items() if k.startswith("ft_params_after_step/")}
        for key, value in refs.items():
            recipe = rearrangement(key, available, get, patch)
            if key == "attention/maps_random":
                recipe = {"recipe": "random_attention", **RANDOM_MAPS}
            if key in after_step:
                continue
            if recipe is None:
                bundle.add(key, value)
            else:
                bundle.derive(key, value, recipe, replay.regenerate(recipe, get))
        extra: dict[str, Any] = {"source": f"../shared/fixtures/{name}" if name != "inputs" else "../shared/fixtures"}
        if config.exists():
            extra["checkpoint"] = flax_checkpoint(bundle, fixture_dir)
        elif (fixture_dir / "ckpt").is_dir():
            extra["checkpoint"] = audiomae_checkpoint(bundle, fixture_dir)
        for key, value in after_step.items():  # the parameter before the step, XOR the bits the step changed
            source = f"ckpt/{key.partition('/')[2]}"
            bundle.derive(key, value, {"recipe": "copy", "source": source}, golden_copy(bundle, source), xor=True)
        if name in golden.FINETUNE_FIXTURES:
            extra["json"] = {k: json.loads((fixture_dir / k).read_text()) for k in FT_JSON}
        if name == "analyses":
            with np.load(fixture_dir / "attention" / "maps_structured.npz") as structured:
                extra["structured_head_names"] = [str(n) for n in structured["names"]]
            extra["json"] = {k: json.loads((fixture_dir / k).read_text()) for k in ANALYSES_JSON}
        size = bundle.write(args.out, name, extra)
        total += size
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(bundle.counts.items()))
        print(f"{name:<20} {size / 1e6:6.2f} MB  ({counts})")
    on_disk = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file() and "__pycache__" not in f.parts)
    print(f"total {total / 1e6:.2f} MB of bundles; {on_disk / 1e6:.2f} MB of files in {args.out}")
    seconds = verify(args.out, originals, args.fixtures)
    print(f"verified: every kept array reads back bit for bit; the 6 checkpoints rebuild equal ({seconds:.1f} s)")


if __name__ == "__main__":
    main()
