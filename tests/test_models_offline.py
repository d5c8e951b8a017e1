"""No command except `models pull` opens a network connection (or even resolves a host name).

Each command runs as a real subprocess with a `sitecustomize` that records and refuses every
IPv4/IPv6 connect and every DNS lookup: a command that so much as tries is caught, even one
that would swallow the failure. `pull` under the same guard is the control that the guard
bites.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

GUARD = '''\
import os, socket

_LOG = os.environ["NET_GUARD_LOG"]


def _record(what):
    with open(_LOG, "a", encoding="utf-8") as fh:
        fh.write(f"{os.getpid()} {what}\\n")


_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _record(f"connect {address!r}")
        raise OSError(101, "network disabled by the test")
    return _connect(self, address)


def connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _record(f"connect_ex {address!r}")
        return 101
    return _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):
    _record(f"getaddrinfo {host!r}")
    raise socket.gaierror(-2, "name resolution disabled by the test")


socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
'''


@pytest.fixture
def guarded(cli: list[str], cli_env: dict[str, str], tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `libra-edge ARGS...` with networking trapped; the trap's log is `tmp_path/net.log`."""
    site = tmp_path / "netguard"
    site.mkdir()
    (site / "sitecustomize.py").write_text(GUARD)
    env = {**cli_env, "NET_GUARD_LOG": str(tmp_path / "net.log"),
           "PYTHONPATH": f"{site}:{cli_env.get('PYTHONPATH', '')}".rstrip(":")}
    # Point the hub at a reachable-looking endpoint: only the guard stands in the way.
    env.pop("HF_HUB_OFFLINE", None)
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    env["HF_HOME"] = str(tmp_path / "hf-home")

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *map(str, args)], env=env, capture_output=True, text=True,
                              timeout=120)

    return run


def attempts(tmp_path: Path) -> list[str]:
    log = tmp_path / "net.log"
    return log.read_text().splitlines() if log.exists() else []


def test_every_models_command_works_without_touching_the_network(
    guarded: Callable[..., subprocess.CompletedProcess[str]], tiny_qwen_gguf: Path, tmp_path: Path,
) -> None:
    usb = tmp_path / "usb"
    steps = [
        ("models", "list"),
        ("models", "import", tiny_qwen_gguf, "--name", "guard"),
        ("models", "list", "--json"),
        ("models", "info", "guard"),
        ("models", "info", tiny_qwen_gguf, "--json"),
        ("models", "default", "guard"),
        ("models", "default"),
        ("models", "verify"),
        ("models", "export", "guard", usb, "--mkdir"),
        ("models", "import", usb / "guard.gguf", "--name", "copy"),
        ("models", "verify", "copy"),
        ("models", "rm", "copy"),
        ("models", "pull", "--help"),
    ]
    for step in steps:
        result = guarded(*step)
        assert result.returncode == 0, (step, result.stderr)
    assert attempts(tmp_path) == []


def test_check_finds_the_installed_model_without_touching_the_network(
    guarded: Callable[..., subprocess.CompletedProcess[str]], tiny_qwen_gguf: Path, tmp_path: Path,
) -> None:
    assert guarded("models", "import", tiny_qwen_gguf, "--name", "guard").returncode == 0
    for model in ([], ["--model", "guard"]):  # the default, then by name
        result = guarded("check", *model, "-q", "你好", "-r", "你好！", "--fast", "--json")
        assert result.returncode in (0, 1), result.stderr
        assert '"label"' in result.stdout
    assert attempts(tmp_path) == []


def test_the_guard_catches_pull(guarded: Callable[..., subprocess.CompletedProcess[str]],
                                tmp_path: Path) -> None:
    result = guarded("models", "pull", "libra-guard-3b")
    assert result.returncode == 5, result.stderr
    assert "cannot reach the Hugging Face hub" in result.stderr
    assert any("127.0.0.1" in line for line in attempts(tmp_path))
