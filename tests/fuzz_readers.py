"""Fuzz the checkpoint readers with Hypothesis: every input ends in a clean refusal or a working model.

    python tests/fuzz_readers.py [--examples N] [--seed S] [--out REPORT.json]

Run it only in a capped child process (`test_fuzz_readers.py` does, under an address-space
cap): a crash, a hang or an allocation beyond the cap stays there. Targets, each fed N inputs
(Hypothesis, seeded: the same seed gives the same inputs):

    msgpack          Flax train states: generated msgpack trees (maps, arrays, every flax
                     extension type, nested tuples, odd shapes and dtypes) as `params`, or
                     spliced into a valid micro train state, converted with its config.json
    msgpack_bytes    a valid micro Flax checkpoint with bytes flipped, cut, repeated
    safetensors      generated headers (dtypes, shapes, offsets, metadata with a mutated
                     config) over generated data; loaded as our checkpoint
    torch            our micro .pt with config values and tensors replaced (wrong types,
                     shapes, dtypes, stride-0 / overlapping views, other keys), loaded
    torch_bytes      our micro .pt and an Audio-MAE micro .pth with bytes flipped, cut, repeated
    audiomae         the Audio-MAE micro .pth with its args and tensors replaced, converted
    config_json      the authors' config.json and timm's config.json with values replaced,
                     converted with valid micro weights; our config dict through MWMAEConfig

A clean refusal is CheckpointError / ConversionError (ValueError for a bare config); a loaded
model must build its encoder and run it on one chunk. Anything else (another exception, a
crash, running out of the cap) is a finding. Prints one JSON report (inputs tried, loaded,
refused per target, findings, peak RSS) and exits 1 if there was a finding.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
import sys
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import msgpack
import numpy as np
import torch
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

import capped
from hear_mwmae.checkpoint import Checkpoint, CheckpointError, build_encoder, load_checkpoint, save_checkpoint
from hear_mwmae.config import FrontendConfig, ModelConfig, MWMAEConfig
from hear_mwmae.convert import ConversionError, convert_source, parameter_table
from hear_mwmae.model import MWMAE

# ----------------------------------------------------------------------------- micro seeds
MICRO = ModelConfig(img_size=(8, 80), patch_size=(4, 16), embed_dim=8, depth=1, num_heads=2, decoder_embed_dim=8,
                    decoder_depth=1, decoder_num_heads=2, decoder_window_sizes=(2, 5))
RELEASE_CONFIG = {"audio_config": {"sample_rate": 16000}, "model": {"arch": "MWMAE", "model_args": {
    "img_size": [8, 80], "patch_size": [4, 16], "embed_dim": 8, "depth": 1, "num_heads": 2, "decoder_embed_dim": 8,
    "decoder_depth": 1, "decoder_num_heads": 2, "decoder_window_sizes": [2, 5]}}}
TIMM_CONFIG = {"architecture": "vit_micro_patch16", "model_args": {"embed_dim": 8, "depth": 1, "num_heads": 2},
               "pretrained_cfg": {"input_size": [1, 64, 128]}}


def pack_array(a: np.ndarray) -> msgpack.ExtType:
    a = np.require(a, requirements="C")
    return msgpack.ExtType(1, msgpack.packb((a.shape, a.dtype.name, a.tobytes()), use_bin_type=True))


def micro_flax_tree() -> dict[str, Any]:
    """A valid train state of MICRO in the release's layout (params + step)."""
    torch.manual_seed(0)
    state = MWMAE(MICRO).state_dict()
    params: dict[str, Any] = {}
    for flax_key, key, _ in parameter_table(MICRO, {"encoder": False, "decoder": True}):
        value = state[key].numpy()
        if flax_key.endswith("relative_position_bias_table"):
            value = value.reshape(-1, 1)
        elif flax_key.endswith("kernel"):
            value = value.T if value.ndim == 2 else value.transpose(2, 3, 1, 0)
        node = params
        *parents, leaf = flax_key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = pack_array(value)
    return {"step": pack_array(np.array(7, np.int32)), "params": params}


def micro_audiomae() -> dict[str, torch.Tensor]:
    """An Audio-MAE encoder (the authors' names): 8 wide, 1 block, 4 x 8 patches of 16 x 16."""
    from hostile import audiomae_keys

    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(shape, generator=gen) * 0.1 for k, shape in audiomae_keys(8, 1, tokens=33).items()}


class Seeds:
    """The valid micro files every target starts from, written once into `root`."""

    def __init__(self, root: Path) -> None:
        import argparse as ap

        self.root = root
        torch.manual_seed(0)
        self.config = MWMAEConfig(MICRO, FrontendConfig())
        self.state = MWMAE(MICRO).state_dict()
        self.pt = save_checkpoint(root / "micro.pt", self.config, self.state)
        self.pt_bytes = self.pt.read_bytes()
        self.payload = torch.load(self.pt, weights_only=True)
        self.flax = micro_flax_tree()
        self.flax_bytes = msgpack.packb(self.flax)
        self.audiomae = micro_audiomae()
        self.pth = root / "micro.pth"
        torch.save({"model": self.audiomae, "args": ap.Namespace(model="vit_micro_patch16", num_heads=2)}, self.pth)
        self.pth_bytes = self.pth.read_bytes()
        for check in (lambda: load_checkpoint(self.pt), lambda: convert_source(self.pth)):
            check()  # the seeds themselves load


# ----------------------------------------------------------------------------- running one input
class Tally:
    def __init__(self) -> None:
        self.tried = self.loaded = self.refused = 0


def exercise(result: Any) -> None:
    """A loaded result must be a usable model: build the encoder, run one chunk."""
    ckpt = result if isinstance(result, Checkpoint) else Checkpoint(result.config, result.state_dict,
                                                                     result.encoder_only, result.provenance)
    encoder = build_encoder(ckpt)
    with torch.no_grad():
        out = encoder.forward_features(torch.zeros(1, *ckpt.config.model.img_size))
    assert out.shape[0] == 1


def run_one(tally: Tally, action: Callable[[], Any], clean: tuple[type, ...] = (CheckpointError, ConversionError),
            build: bool = True) -> None:
    """Run one input; a refusal of a `clean` type or a working model is fine, anything else raises."""
    tally.tried += 1
    try:
        result = action()
    except clean:
        tally.refused += 1
        return
    if build:
        exercise(result)
    tally.loaded += 1


# ----------------------------------------------------------------------------- strategies
ODD_INTS = st.sampled_from([-(2**63), -(2**31), -1, 0, 1, 2, 3, 7, 255, 2**16, 2**31 - 1, 2**32, 2**40, 10**9,
                            2**63 - 1])  # (msgpack packs 64-bit integers at most)
HUGE_INTS = st.sampled_from([2**64, 10**30, -(10**30), 10**5000])
JSON_HUGE = "__a 5000-digit integer__"  # json.dumps cannot write it: `to_json` puts it in


def to_json(value: Any) -> str:
    return json.dumps(value).replace(f'"{JSON_HUGE}"', "9" * 5000)


def huge_ints(value: Any) -> Any:
    """`value` with JSON_HUGE as the integer it stands for (what json.loads would have made)."""
    if value == JSON_HUGE:
        return 10**5000 - 1
    if isinstance(value, dict):
        return {k: huge_ints(v) for k, v in value.items()}
    return [huge_ints(v) for v in value] if isinstance(value, list) else value
ODD_FLOATS = st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 0.5, 3.7, 1e-300, 1e300, 4.0])
SCALARS = st.one_of(st.none(), st.booleans(), ODD_INTS, st.integers(-5, 300), ODD_FLOATS,
                    st.text(max_size=6), st.binary(max_size=8))
DTYPES = st.sampled_from(["float32", "bfloat16", "float16", "float64", "int32", "bool", "complex64", "float8_e4m3fn",
                          "object", "<f4", "", "V8"])


@st.composite
def array_leaves(draw) -> msgpack.ExtType:
    shape = draw(st.lists(st.one_of(st.integers(0, 6), ODD_INTS), max_size=4))
    dtype = draw(DTYPES)
    nbytes = draw(st.one_of(st.just(4 * max(1, math.prod(s for s in shape if 0 <= s < 64))), st.integers(0, 64)))
    payload = draw(st.sampled_from(["ok", "scalar2", "junk"]))
    code = draw(st.sampled_from([1, 1, 3]))
    if payload == "junk":
        return msgpack.ExtType(code, draw(st.binary(max_size=24)))
    fields = [dtype, b"\0" * nbytes] if payload == "scalar2" else [shape, dtype, b"\0" * nbytes]
    return msgpack.ExtType(code, msgpack.packb(fields, use_bin_type=True))


def _extend(children):
    keys = st.one_of(st.sampled_from(["params", "kernel", "bias", "0", "__msgpack_chunked_array__", "shape",
                                      "chunks"]), st.text(max_size=4), st.integers(-2, 3))
    return st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4),
                     st.lists(children, max_size=3).map(lambda xs: msgpack.ExtType(4, msgpack.packb(xs))),
                     st.tuples(children, children).map(lambda xs: msgpack.ExtType(2, msgpack.packb(list(xs)))))


MSGPACK_TREES = st.recursive(st.one_of(SCALARS, array_leaves()), _extend, max_leaves=24)


def _nested_tuples(depth: int) -> msgpack.ExtType:
    inner = msgpack.packb([])
    for _ in range(depth):
        inner = msgpack.packb(msgpack.ExtType(4, b"\x91" + inner))
    return msgpack.ExtType(4, b"\x91" + inner)


@st.composite
def byte_mutations(draw, original: bytes) -> bytes:
    """`original` with a few edits: bytes flipped or set to odd values, a cut, a range repeated."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "cut", "repeat", "insert"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF, 0xC1, 0xD9, 0xDD, 0xDF, 0xC7]))
        elif op == "cut":
            data = data[:at]
        elif op == "repeat":
            data[at:at] = data[at:at + draw(st.integers(1, 64))] * draw(st.integers(1, 3))
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


def mutated_dict(base: dict[str, Any], values: st.SearchStrategy) -> st.SearchStrategy:
    """`base` with 1 to 3 of its keys (or a new key) set to drawn values, or deleted."""
    @st.composite
    def build(draw):
        out = dict(base)
        for _ in range(draw(st.integers(1, 3))):
            key = draw(st.one_of(st.sampled_from(sorted(base)), st.text(max_size=5)))
            if draw(st.integers(0, 9)) == 0:
                out.pop(key, None)
            else:
                out[key] = draw(values)
        return out
    return build()


JSON_SCALARS = st.one_of(st.none(), st.booleans(), ODD_INTS, st.sampled_from([2**64, 10**30, JSON_HUGE]),
                         st.integers(-5, 300), ODD_FLOATS, st.text(max_size=6))
JSON_VALUES = st.one_of(JSON_SCALARS,
                        st.lists(st.one_of(ODD_INTS, st.integers(-1, 300), ODD_FLOATS, st.booleans()), max_size=4),
                        st.dictionaries(st.text(max_size=3), JSON_SCALARS, max_size=2))
CONFIG_VALUES = st.one_of(JSON_VALUES, HUGE_INTS, st.binary(max_size=4),
                          st.tuples(st.integers(1, 9), st.integers(1, 9)))


@st.composite
def tensors(draw) -> Any:
    """A value for a state-dict entry: tensors of odd shapes / dtypes / layouts, or not a tensor."""
    kind = draw(st.sampled_from(["shape", "dtype", "expanded", "strided", "nan", "scalar", "object", "empty"]))
    if kind == "shape":
        return torch.zeros(draw(st.lists(st.integers(0, 9), max_size=4)))
    if kind == "dtype":
        return torch.zeros(3, dtype=draw(st.sampled_from([torch.int64, torch.bool, torch.uint8, torch.complex64,
                                                          torch.float16, torch.bfloat16])))
    if kind == "expanded":
        return torch.zeros(1).expand(draw(st.integers(2, 64)), draw(st.integers(1, 64)))
    if kind == "strided":
        n = draw(st.integers(1, 16))
        return torch.zeros(2 * n * n).as_strided((n, n), (draw(st.integers(0, n)), draw(st.integers(0, n))))
    if kind == "nan":
        return torch.full((draw(st.integers(1, 8)),), draw(st.sampled_from([math.nan, math.inf, -math.inf])))
    if kind == "scalar":
        return draw(SCALARS)
    if kind == "object":
        return draw(st.one_of(st.lists(SCALARS, max_size=3), st.dictionaries(st.text(max_size=3), SCALARS, max_size=3)))
    return torch.zeros(0)


# ----------------------------------------------------------------------------- targets
def targets(seeds: Seeds, work: Path) -> dict[str, Callable[[Tally], Callable[[], None]]]:
    """name -> a function that builds the Hypothesis test for that target (closing over its tally)."""

    def run_dir(tree_bytes: bytes, config: Any = None) -> Path:
        run = work / "run"
        run.mkdir(exist_ok=True)
        (run / "checkpoint_0").write_bytes(tree_bytes)
        (run / "config.json").write_text(json.dumps(config if config is not None else RELEASE_CONFIG))
        return run

    def flax_trees(tally: Tally):
        spliced = st.tuples(st.sampled_from(["params/patch_embed/proj/kernel", "params/pos_embed",
                                             "params/decoder_block_00/wmha_block/attn_heads_0",
                                             "params/encoder_block_00", "params", "step"]),
                            st.one_of(MSGPACK_TREES, st.integers(60, 400).map(_nested_tuples)))

        @given(st.one_of(MSGPACK_TREES.map(lambda t: ("params", t)), spliced))
        def test(edit):
            path, value = edit
            tree = copy.deepcopy(seeds.flax)
            node = tree
            *parents, leaf = path.split("/")
            for part in parents:
                node = node[part]
            node[leaf] = value
            run_one(tally, lambda: convert_source(run_dir(msgpack.packb(tree, use_bin_type=True))))
        return test

    def flax_bytes(tally: Tally):
        @given(byte_mutations(seeds.flax_bytes))
        def test(data):
            run_one(tally, lambda: convert_source(run_dir(data)))
        return test

    def safetensors_headers(tally: Tally):
        entry = st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8",
                                                                  "x"]),
                                       "shape": st.lists(st.one_of(st.integers(0, 9), ODD_INTS), max_size=3),
                                       "data_offsets": st.lists(st.one_of(st.integers(0, 64), ODD_INTS), min_size=2,
                                                                max_size=2)})
        configs = mutated_dict(seeds.config.to_dict()["model"], JSON_VALUES)

        @given(st.dictionaries(st.sampled_from(["encoder.norm.weight", "encoder.pos_embed", "w", ""]), entry,
                               max_size=3), configs, st.binary(max_size=96), st.booleans())
        def test(header, model, data, valid_state):
            path = work / "x.safetensors"
            meta = {"format": "hear-mwmae", "format_version": "3",
                    "config": to_json({"model": model, "frontend": seeds.config.to_dict()["frontend"]})}
            if valid_state:
                from safetensors.torch import save

                blob = save(seeds.state, metadata=meta)
            else:
                head = json.dumps({**header, "__metadata__": meta}).encode()
                blob = len(head).to_bytes(8, "little") + head + data
            path.write_bytes(blob)
            run_one(tally, lambda: load_checkpoint(path))
        return test

    def torch_payloads(tally: Tally):
        keys = st.one_of(st.sampled_from(sorted(seeds.state)), st.text(max_size=6), st.integers(-1, 2))
        configs = mutated_dict(seeds.config.to_dict()["model"], CONFIG_VALUES)
        tops = mutated_dict({k: v for k, v in seeds.payload.items() if k != "state_dict"},
                            st.one_of(CONFIG_VALUES, st.just({"x": torch.zeros(2)})))

        @given(st.one_of(configs, st.just(None)), st.dictionaries(keys, tensors(), max_size=3), st.one_of(tops,
                                                                                                         st.just(None)))
        def test(model, entries, top):
            payload = dict(top) if top is not None else dict(seeds.payload)
            payload.setdefault("format", "hear-mwmae")
            if model is not None:
                payload["config"] = {"model": model, "frontend": seeds.config.to_dict()["frontend"]}
            payload["state_dict"] = {**seeds.state, **entries}
            path = work / "x.pt"
            torch.save(payload, path)
            run_one(tally, lambda: load_checkpoint(path))
        return test

    def torch_bytes(tally: Tally):
        originals = {"pt": seeds.pt_bytes, "pth": seeds.pth_bytes}

        @given(st.sampled_from(["pt", "pth"]).flatmap(lambda w: st.tuples(st.just(w), byte_mutations(originals[w]))))
        def test(case):
            which, data = case
            path = work / f"x.{which}"
            path.write_bytes(data)
            run_one(tally, lambda: load_checkpoint(path))
        return test

    def audiomae(tally: Tally):
        import argparse as ap

        args = mutated_dict({"model": "vit_micro_patch16", "num_heads": 2}, st.one_of(
            CONFIG_VALUES, st.sampled_from(["mae_vit_base_patch16", "vit_base_patch16", "vit_huge_patch14"])))
        keys = st.one_of(st.sampled_from(sorted(seeds.audiomae) + ["decoder_embed.weight", "head.weight",
                                                                   "fc_norm.weight", "blocks.7.norm1.weight",
                                                                   "blocks.99999999999.x"]), st.text(max_size=6))

        @given(args, st.dictionaries(keys, tensors(), max_size=3), st.sampled_from(["namespace", "dict", "other"]))
        def test(arg_values, entries, args_kind):
            stored = (ap.Namespace(**{str(k): v for k, v in arg_values.items()}) if args_kind == "namespace"
                      else arg_values if args_kind == "dict" else [1, 2])
            path = work / "x.pth"
            torch.save({"model": {**seeds.audiomae, **entries}, "args": stored}, path)
            run_one(tally, lambda: convert_source(path))
        return test

    def config_json(tally: Tally):
        release = mutated_dict(RELEASE_CONFIG["model"]["model_args"], JSON_VALUES)
        timm = mutated_dict(TIMM_CONFIG["model_args"], JSON_VALUES)
        ours = st.tuples(mutated_dict(seeds.config.to_dict()["model"], JSON_VALUES),
                         mutated_dict(seeds.config.to_dict()["frontend"], JSON_VALUES))
        odd_json = st.sampled_from(['[', '{"model": ' * 50000, '"x"', '{"model": {"arch": "MWMAE", "model_args": 7}}',
                                    '\xff\xfe', '{"model": {"arch": ["MWMAE"]}}'])

        @given(st.one_of(release.map(lambda a: ("release", a)), timm.map(lambda a: ("timm", a)),
                         ours.map(lambda a: ("ours", a)), odd_json.map(lambda a: ("raw", a))))
        def test(case):
            kind, value = case
            if kind == "ours":
                value = huge_ints(value)
                run_one(tally, lambda: MWMAEConfig.from_dict({"model": value[0], "frontend": value[1]}),
                        clean=(ValueError,), build=False)
            elif kind == "timm":
                folder = work / "timm"
                folder.mkdir(exist_ok=True)
                from safetensors.torch import save_file

                if not (folder / "model.safetensors").exists():
                    save_file(seeds.audiomae, folder / "model.safetensors")
                (folder / "config.json").write_text(to_json({**TIMM_CONFIG, "model_args": value}))
                run_one(tally, lambda: convert_source(folder))
            else:
                run = run_dir(seeds.flax_bytes)
                config = value if kind == "raw" else {**RELEASE_CONFIG, "model": {"arch": "MWMAE", "model_args": value}}
                (run / "config.json").write_text(config if kind == "raw" else to_json(config),
                                                 errors="surrogateescape")
                run_one(tally, lambda: convert_source(run))
        return test

    return {"msgpack": flax_trees, "msgpack_bytes": flax_bytes, "safetensors": safetensors_headers,
            "torch": torch_payloads, "torch_bytes": torch_bytes, "audiomae": audiomae, "config_json": config_json}


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100, help="inputs per target")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", nargs="*", help="only these targets")
    args = parser.parse_args(argv)
    capped.report_peak_rss()
    import logging

    logging.disable(logging.WARNING)  # on-the-fly conversion warnings, once per input
    warnings.simplefilter("ignore")  # torch's, about pickle protocols of mutated files
    torch.set_num_threads(1)
    report: dict[str, Any] = {"seed": args.seed, "examples_per_target": args.examples, "targets": {}, "findings": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        seeds = Seeds(root)
        for name, make in targets(seeds, root).items():
            if args.targets and name not in args.targets:
                continue
            tally = Tally()
            test = settings(max_examples=args.examples, deadline=None, database=None, derandomize=False,
                            phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
                            print_blob=False)(seed(args.seed)(make(tally)))
            try:
                test()
            except Exception as exc:  # noqa: BLE001 - a finding: reported, the test fails on it
                frames = traceback.format_tb(exc.__traceback__)
                report["findings"].append({"target": name, "error": f"{type(exc).__name__}: {exc}"[:600],
                                           "where": [f.strip()[:300] for f in frames[-6:]]})
            report["targets"][name] = vars(tally)
    report["tried"] = sum(t["tried"] for t in report["targets"].values())
    out = io.StringIO()
    json.dump(report, out)
    print(out.getvalue(), flush=True)
    return 1 if report["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
