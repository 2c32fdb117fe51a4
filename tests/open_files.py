"""Open files the ways a user can, in this process, one after another; print one JSON line each.

    python tests/open_files.py ACTION PATH [ACTION PATH ...]

ACTION: `info` (the CLI command), `convert` (the CLI command, into PATH.converted.pt),
`load_model` (the HEAR API), `load_checkpoint`. Each line: {"action", "path", "outcome":
"ok" | "refused" (a one-line error, exit code 2, or CheckpointError / ConversionError) |
"raised" (anything else: a bug), "message"}. Run it only in a capped child process
(`capped.run_capped`): a crash or an allocation beyond the cap stays there.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def attempt(action: str, path: str) -> dict[str, str]:
    import hear_mwmae
    from hear_mwmae import cli
    from hear_mwmae.checkpoint import CheckpointError, load_checkpoint
    from hear_mwmae.convert import ConversionError

    try:
        if action in ("info", "convert"):
            errors = _Errors()
            logging.getLogger("hear_mwmae").addHandler(errors)
            argv = [action, path] + ([path + ".converted.pt"] if action == "convert" else [])
            with contextlib.redirect_stdout(io.StringIO()):
                code = cli.main(argv)
            logging.getLogger("hear_mwmae").removeHandler(errors)
            outcome = {0: "ok", 2: "refused"}.get(code, f"exit {code}")
            return {"outcome": outcome, "message": " | ".join(errors.messages)}
        if action == "load_model":
            hear_mwmae.load_model(path)
        elif action == "load_checkpoint":
            load_checkpoint(path)
        else:
            raise SystemExit(f"unknown action {action!r}")
    except (CheckpointError, ConversionError) as exc:
        return {"outcome": "refused", "message": str(exc)}
    except Exception as exc:  # noqa: BLE001 - reported, the test fails on it
        return {"outcome": "raised", "message": f"{type(exc).__name__}: {exc}"}
    return {"outcome": "ok", "message": ""}


def main(argv: list[str]) -> int:
    import capped  # (this script's folder is first on sys.path)

    capped.report_peak_rss()
    logging.basicConfig(level=logging.WARNING)
    for action, path in zip(argv[::2], argv[1::2]):
        print(json.dumps({"action": action, "path": path, **attempt(action, path)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
