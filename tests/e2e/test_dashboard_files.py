"""The dashboard's static files: found in the source tree, served at ``/`` next to ``/mqtt``,
and shipped in the wheel (a real ``pip install .`` into a fresh virtual environment)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import urllib.error
import urllib.request
from pathlib import Path

from twisted.internet import reactor
from twisted.web.static import Data

from mqtt_twisted import dashboard
from mqtt_twisted.broker import Broker, BrokerConfig
from mqtt_twisted.web import build_site

from .browser import REPO, BrokerProcess, broker_process  # noqa: F401

WEB = REPO / "web"
WEB_FILES = sorted(p.name for p in WEB.iterdir() if p.is_file())


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


def test_source_tree_web_directory_is_found_first():
    assert dashboard.find_web_directory() == WEB
    assert dashboard.candidates()[0] == WEB


def test_environment_variable_points_elsewhere(tmp_path, monkeypatch):
    for name in dashboard.REQUIRED:
        (tmp_path / name).write_text("")
    monkeypatch.setenv(dashboard.ENVIRONMENT_VARIABLE, str(tmp_path))
    assert dashboard.find_web_directory() == tmp_path


def test_site_mounts_dashboard_at_root_and_keeps_mqtt():
    site = build_site(Broker(reactor, BrokerConfig()), "test")
    assert isinstance(site.resource, dashboard.DashboardFile)
    assert Path(site.resource.path) == WEB
    assert b"mqtt" in site.resource.children


def test_placeholder_page_when_the_files_are_missing(monkeypatch):
    monkeypatch.setattr(dashboard, "find_web_directory", lambda: None)
    site = build_site(Broker(reactor, BrokerConfig()), "test")
    assert isinstance(site.resource.children[b""], Data)
    assert b"mqtt" in site.resource.children


def test_static_files_are_self_contained():
    """No CDN, no build step: every import is a relative ES module that exists in web/."""
    assert {"index.html", "style.css", "app.js", "mqtt.js"} <= set(WEB_FILES)
    for name in WEB_FILES:
        text = (WEB / name).read_text()
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", text), name
        assert "@import" not in text and "require(" not in text, name
        for module in re.findall(r"from\s+[\"']([^\"']+)[\"']", text):
            assert module.startswith("./") and (WEB / module[2:]).is_file(), (name, module)
    index = (WEB / "index.html").read_text()
    assert '<link rel="icon" href="data:,">' in index
    assert '<script type="module" src="app.js">' in index
    assert 'name="viewport"' in index


def test_broker_serves_every_file_with_its_type(broker_process):
    broker = broker_process("--sys-interval", "0")
    types = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
    status, content_type, body = get(broker.url)
    assert (status, content_type.split(";")[0]) == (200, "text/html")
    assert body == (WEB / "index.html").read_bytes()
    for name in WEB_FILES:
        status, content_type, body = get(broker.url + name)
        assert status == 200, name
        assert content_type.split(";")[0] == types[Path(name).suffix], name
        assert body == (WEB / name).read_bytes()
    assert get(broker.url + "no-such-file.js")[0] == 404
    assert get(broker.url + "../setup.cfg")[0] == 404
    # /mqtt is still the WebSocket endpoint (autobahn answers a plain GET with its own page)
    assert get(broker.url + "mqtt")[1].startswith("text/html")
    assert b"Autobahn" in get(broker.url + "mqtt")[2]


def test_pip_install_puts_the_dashboard_into_the_environment(tmp_path):
    """``pip install .`` (not editable) into a new virtual environment: the files land in
    <venv>/share/mqtt-twisted/web, the installed package finds them there, and the broker run
    from that environment serves them."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache")
    shutil.copytree(REPO / "mqtt_twisted", source / "mqtt_twisted", ignore=ignore)
    shutil.copytree(REPO / "twisted", source / "twisted", ignore=ignore)
    shutil.copytree(WEB, source / "web")
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # The dependencies (and setuptools/wheel for the build) come from the test environment:
    # its site-packages as a plain path, so its own .pth files (the editable install of this
    # checkout) are not read.
    Path(purelib, "test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", dashboard.ENVIRONMENT_VARIABLE)
    }
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "-q",
            str(source),
        ],
        check=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    shutil.rmtree(source)  # nothing may come from the source tree any more

    found = subprocess.run(
        [
            str(python),
            "-c",
            "import mqtt_twisted, mqtt_twisted.dashboard as d; "
            "print(mqtt_twisted.__file__); print(d.find_web_directory())",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    ).stdout.splitlines()
    assert Path(found[0]).is_relative_to(purelib)
    web = Path(found[1])
    assert web == venv / "share" / "mqtt-twisted" / "web"
    assert sorted(p.name for p in web.iterdir()) == WEB_FILES

    broker = BrokerProcess(
        tmp_path,
        "--sys-interval",
        "0",
        twistd=[str(python), "-c", "from twisted.scripts.twistd import run; run()"],
    )
    broker.start()
    try:
        status, _type, body = get(broker.url)
        assert status == 200 and body == (WEB / "index.html").read_bytes()
        assert get(broker.url + "mqtt.js")[2] == (WEB / "mqtt.js").read_bytes()
    finally:
        broker.stop()
