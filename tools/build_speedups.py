"""Compile the packet parser with mypyc into mqtt_twisted/packets/_parser_compiled*.so.

The parser runs once or twice per message (a PUBLISH in, and a PUBACK per QoS 1 message
a subscriber receives); compiled, it takes about a quarter less CPU per QoS 0 message
and an eighth less per QoS 1 message (bench/ and README, "Speed").

The compiled module is built from a copy of ``parser.py`` that records the SHA-256 of
the source it was built from; :mod:`mqtt_twisted.packets.speedups` uses it only while
``parser.py`` still has that hash, so an edited parser is never shadowed by a stale build
(it runs as plain Python until ``make`` builds it again).

Usage: ``python tools/build_speedups.py`` from the repository root (``make install`` does
it). Without a C compiler or mypyc it says so and exits 0: the pure-Python parser is used.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mqtt_twisted" / "packets"
SOURCE = PACKAGE / "parser.py"
MODULE = "_parser_compiled"


def main() -> int:
    for old in PACKAGE.glob(f"{MODULE}*.so"):
        old.unlink()
    compiler = shutil.which(sysconfig.get_config_var("CC") or "cc") or shutil.which("cc")
    header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if compiler is None or not header.exists():
        print("speedups: no C compiler or Python headers; the parser stays pure Python")
        return 0
    try:
        import mypyc  # noqa: F401
    except ImportError:
        print("speedups: mypyc (part of mypy) is not installed; the parser stays pure Python")
        return 0
    text = SOURCE.read_bytes()
    digest = hashlib.sha256(text).hexdigest()
    generated = PACKAGE / f"{MODULE}.py"
    generated.write_bytes(
        text
        + f'\n\n#: the parser.py this module was compiled from\nSOURCE_SHA256 = "{digest}"\n'.encode()
    )
    build = ROOT / "build" / "speedups"
    try:
        result = subprocess.run(
            [sys.executable, "-m", "mypyc", f"mqtt_twisted/packets/{MODULE}.py"],
            cwd=ROOT,
            env={**os.environ, "MYPYC_OPT_LEVEL": "3"},
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        generated.unlink()
        shutil.rmtree(build, ignore_errors=True)
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-4000:], sep="\n", file=sys.stderr)
        print("speedups: mypyc failed (above); the parser stays pure Python", file=sys.stderr)
        return 0
    built = sorted(p.name for p in PACKAGE.glob(f"{MODULE}*.so"))
    print(f"speedups: compiled parser built ({', '.join(built)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
