"""Errors that mean "the user can fix this", shared by the package and its command line.

The `hear-mwmae` command line (`cli.main`) turns these, and the other input errors the
package raises (`ValueError`, `OSError`, `ImportError` and their subclasses), into one
line on stderr and exit code 2; `-v` adds the traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class UsageError(ValueError):
    """Arguments that cannot work together or on this machine; the message says what to pass."""


class MissingDependency(ImportError):
    """An optional package is needed for what was asked; the message says what to install."""


def require(module: str, purpose: str, extra: str | None = None, package: str | None = None) -> ModuleType:
    """Import an optional dependency, or raise MissingDependency naming the pip command.

    `purpose` says what for, as "to ..." (e.g. "to load hf:// references"); `extra` is the
    hear-mwmae extra that installs it; `package` the pip name when it differs from `module`.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        name = package or module
        how = f"pip install 'hear-mwmae[{extra}]' (or pip install {name})" if extra else f"pip install {name}"
        raise MissingDependency(f"{name} is needed {purpose} but is not installed: {how}") from exc


__all__ = ["MissingDependency", "UsageError", "require"]
