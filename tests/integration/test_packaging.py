"""The distribution is complete: a wheel built from the tracked files, installed into a new virtualenv, with the
source tree gone, migrates a new database, creates an organization and serves `/readyz`.

Offline and fast: the wheel is built without build isolation (setuptools comes with the test extra) and
installed with `--no-deps`; the new virtualenv sees our own virtualenv's packages through a `.pth` file,
which adds them to sys.path without running their `.pth` files (so our editable install stays out of it).
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path

import pytest

from interfaces.database import create_database, drop_database
from tests.conftest import ROOT, free_port


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.fail(f"the packaging test copies the files git tracks: {e}")
    return [name for name in out.decode().split("\0") if name]


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, args))}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_an_installed_wheel_migrates_creates_an_organization_and_serves(tmp_path, admin_url):
    # The working-tree version of every tracked file: what a clean clone would hold once committed.
    src = tmp_path / "src"
    for name in tracked_files():
        path = ROOT / name
        if path.is_file() and not path.is_symlink():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src / name)
    sql_files = sorted(p.name for p in (src / "migrations").glob("*.sql"))
    assert sql_files

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    py = venv / "bin" / "python"
    purelib = run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).strip()
    Path(purelib, "_flusia_test_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1", PIP_NO_INPUT="1")
    dist = tmp_path / "dist"
    started = time.monotonic()
    run(py, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", dist, src, cwd=tmp_path, env=env)
    (wheel,) = dist.glob("flusia_crm-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert {f"migrations/{f}" for f in sql_files} | {"migrations/__init__.py"} <= names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    # --ignore-installed: our own virtualenv, visible through the .pth file, has flusia-crm (editable) too
    run(py, "-m", "pip", "install", "--no-deps", "--ignore-installed", wheel, cwd=tmp_path, env=env)
    shutil.rmtree(src)
    shutil.rmtree(dist)
    build_seconds = time.monotonic() - started

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = json.loads(run(py, "-c", "import json, application, interfaces, migrations;"
                           "print(json.dumps([m.__file__ for m in (application, interfaces, migrations)]))",
                           cwd=elsewhere, env=env))
    assert all(Path(f).is_relative_to(venv) for f in where), where

    name = f"flusia_pkg_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = create_database(admin_url, name)
    env["DATABASE_URL"] = url
    flusia = venv / "bin" / "flusia"
    server = None
    try:
        assert json.loads(run(flusia, "migrate", cwd=elsewhere, env=env)) == {"applied": sql_files}
        org = json.loads(run(flusia, "org", "create", "--name", "Packaged", "--admin-email", "p@example.com", cwd=elsewhere, env=env))
        assert org["token"].startswith("flusia_")
        assert json.loads(run(flusia, "migrate", cwd=elsewhere, env=env)) == {"applied": []}

        port = free_port()
        log = open(tmp_path / "serve.log", "w+")
        server = subprocess.Popen([flusia, "serve", "--port", str(port)], cwd=elsewhere, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
        status, deadline = None, time.monotonic() + 60
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
                    status = response.status
                    break
            except urllib.error.HTTPError as e:
                status = e.code  # 503 until the projections have caught up
            except OSError:
                pass
            time.sleep(0.2)
        log.seek(0)
        assert status == 200, f"/readyz answered {status}; server log:\n{log.read()[-3000:]}"
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
        drop_database(admin_url, name)
    assert build_seconds < 60, build_seconds
