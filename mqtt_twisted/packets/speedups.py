"""The compiled packet parser, when one was built for this very source.

``tools/build_speedups.py`` (run by ``make install``) compiles ``parser.py`` with mypyc.
The build records the SHA-256 of the source it came from; it is used only while
``parser.py`` is unchanged, so editing the parser never runs a stale build. Set
``MQTT_TWISTED_PURE_PYTHON=1`` to use the pure-Python parser regardless.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path
from typing import Any

#: why the pure-Python parser is used, or None when the compiled one is
_WHY_PURE: str | None = "not looked for yet"


def compiled_parser() -> Any:
    """The compiled ``Parser`` class, or None (see :func:`parser_implementation`)."""
    global _WHY_PURE
    if os.environ.get("MQTT_TWISTED_PURE_PYTHON"):
        _WHY_PURE = "MQTT_TWISTED_PURE_PYTHON is set"
        return None
    try:
        compiled = importlib.import_module("mqtt_twisted.packets._parser_compiled")
    except ImportError:
        _WHY_PURE = "not built (make install builds it when a C compiler is present)"
        return None
    source = Path(__file__).with_name("parser.py").read_bytes()
    if getattr(compiled, "SOURCE_SHA256", None) != hashlib.sha256(source).hexdigest():
        _WHY_PURE = "built from another parser.py (make install builds it again)"
        return None
    _WHY_PURE = None
    return compiled.Parser


def parser_implementation() -> str:
    """'compiled (mypyc)' or 'pure Python (<why>)', for the startup log."""
    return "compiled (mypyc)" if _WHY_PURE is None else f"pure Python ({_WHY_PURE})"
