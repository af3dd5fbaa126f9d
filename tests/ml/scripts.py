"""The repository's ``scripts/*.py`` are not a package: tests load them by path."""

from __future__ import annotations

import importlib.util
import pathlib
from types import ModuleType

SCRIPTS = pathlib.Path(__file__).resolve().parents[2] / "scripts"


def load_script(file_name: str) -> ModuleType:
    """Import ``scripts/<file_name>`` as a module of its own name (without ``.py``)."""
    spec = importlib.util.spec_from_file_location(pathlib.Path(file_name).stem, SCRIPTS / file_name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
