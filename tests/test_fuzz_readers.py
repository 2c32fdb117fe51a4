"""The checkpoint readers under fuzzing (issue 19): `fuzz_readers.py` feeds every reader seeded,
generated inputs (msgpack trees and bytes, safetensors headers, torch payloads and bytes,
Audio-MAE args, config JSON) in a child process under an address-space cap; each must end in a
clean refusal or a model that builds and runs. Bounded: 100 inputs per target, one seed (the
same inputs on every run), well under a minute; `python tests/fuzz_readers.py --examples N
--seed S` runs longer campaigns.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import capped

FUZZ = Path(__file__).with_name("fuzz_readers.py")
TARGETS = ("msgpack", "msgpack_bytes", "safetensors", "torch", "torch_bytes", "audiomae", "config_json")
EXAMPLES = 100  # per target
ADDRESS_SPACE_MIB = 2048  # the child's cap (the interpreter with torch maps ~650 MiB)
MEMORY_BUDGET_MIB = 600  # peak resident memory over all inputs (the child idles at ~250)


def test_readers_refuse_cleanly_or_load_under_fuzzing():
    ended = capped.run_capped([sys.executable, str(FUZZ), "--examples", str(EXAMPLES), "--seed", "0"],
                              address_space_mib=ADDRESS_SPACE_MIB, timeout_s=300)
    assert ended.signal is None and not ended.timed_out, str(ended)  # no crash, no hang
    reports = [json.loads(line) for line in ended.stdout.splitlines() if line.startswith("{")]
    assert reports, str(ended)
    report = reports[-1]
    print(f"fuzzed {report['tried']} inputs, {ended.seconds:.0f} s, peak RSS {ended.peak_rss_mib:.0f} MiB:",
          json.dumps(report["targets"]))
    assert report["findings"] == [] and ended.returncode == 0, json.dumps(report["findings"], indent=1)
    assert set(report["targets"]) == set(TARGETS)
    for name, tally in report["targets"].items():
        assert tally["tried"] == EXAMPLES and tally["loaded"] + tally["refused"] == tally["tried"], name
        assert tally["refused"] > 0, name  # the target reached the checks it is there for
    assert sum(t["loaded"] for t in report["targets"].values()) > 0  # and some inputs stayed valid models
    assert ended.peak_rss_mib < MEMORY_BUDGET_MIB, str(ended)
