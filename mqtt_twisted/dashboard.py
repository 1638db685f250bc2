"""The browser dashboard: finds the static files of ``web/`` and serves them.

The files live in ``web/`` at the root of the source tree. A wheel installs them as data files
under ``<prefix>/share/mqtt-twisted/web`` (``[options.data_files]`` in ``setup.cfg``). The
source tree wins, so a checkout or an editable install serves the files being edited.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
from pathlib import Path

from twisted.web.pages import forbidden, notFound
from twisted.web.static import File

#: where ``pip install .`` puts ``web/``, relative to an installation prefix
SHARE = Path("share", "mqtt-twisted", "web")
#: files that tell the dashboard's directory apart from any other ``web/``
REQUIRED = ("index.html", "app.js", "mqtt.js")
#: set to a directory to serve the dashboard from there instead
ENVIRONMENT_VARIABLE = "MQTT_TWISTED_WEB"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".json": "application/json",
}


def _is_dashboard(directory: Path) -> bool:
    return all((directory / name).is_file() for name in REQUIRED)


def candidates() -> list[Path]:
    """Where the dashboard may be, in the order they are tried."""
    found = []
    override = os.environ.get(ENVIRONMENT_VARIABLE)
    if override:
        found.append(Path(override))
    found.append(Path(__file__).resolve().parent.parent / "web")  # source tree / editable
    prefixes = [sys.prefix, sysconfig.get_path("data"), sys.exec_prefix]
    try:
        prefixes.append(site.getuserbase())  # pip install --user
    except Exception:  # pragma: no cover - site without a user base
        pass
    prefixes.append(sys.base_prefix)
    for prefix in prefixes:
        if prefix:
            found.append(Path(prefix) / SHARE)
    unique = []
    for path in found:
        if path not in unique:
            unique.append(path)
    return unique


def find_web_directory() -> Path | None:
    """The directory holding the dashboard's files, or ``None`` if it is not installed."""
    for directory in candidates():
        if _is_dashboard(directory):
            return directory
    return None


class DashboardFile(File):
    """Static files with JavaScript module MIME types and no directory listings."""

    contentTypes = {**File.contentTypes, **CONTENT_TYPES}
    childNotFound = notFound("No such file.")  # type: ignore[assignment]  # any IResource serves

    def directoryListing(self):
        return forbidden("Directory listings are off.")


def dashboard_resource(directory: Path | None = None) -> File | None:
    """A ``File`` resource serving the dashboard (``index.html`` at its root), or ``None``."""
    directory = directory or find_web_directory()
    if directory is None:
        return None
    resource = DashboardFile(str(directory), defaultType="application/octet-stream")
    resource.indexNames = ["index.html"]
    return resource
