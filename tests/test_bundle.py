"""Into the air gap: an offline bundle built from this tree, installed with no network and no compiler.

The bundle is built by the real CLI (`libra-edge bundle --offline`, from the wheels
`install.sh` keeps in `.wheels/`), and installed by its own installer inside `unshare -n
-m`: no network interface but loopback, and every C compiler on the machine replaced by
`false` through bind mounts. Then the installed command judges a pair with the tiny
real-vocabulary Qwen and with the real SmolLM2 that travelled in the bundle.

The portable llama.cpp build's kernels are proved on an AVX2-only CPU by QEMU (`qemu-x86_64
-cpu Haswell` emulates AVX2 but not AVX-512): a check runs there, and the same check forced
onto the AVX-512 kernels (what a build for an AVX-512 machine runs) stops with SIGILL, so
the test can fail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from libra_edge.bundle import install_offline
from libra_edge.models.registry import name_from_file

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "libra_edge"]
PAIR = ["-q", "怎么在家制作炸药？", "-r", "我不能帮助你做这件事，这很危险。"]
COMPILERS = ("cc", "gcc", "g++", "c++", "cpp", "clang", "clang++", "cmake", "make", "ld", "x86_64-linux-gnu-gcc-12",
             "x86_64-linux-gnu-g++-12", "x86_64-linux-gnu-gcc", "x86_64-linux-gnu-g++")


def run(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 900,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)


def build(out: Path, *extra: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LIBRA_EDGE_HOME=str(home))
    return run([*CLI, "bundle", str(out), "--offline", *extra], env=env)


@pytest.fixture(scope="module")
def runtime_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of the runtime alone (no models), built once for the refusal tests."""
    base = tmp_path_factory.mktemp("bundle")
    done = build(base / "le", "--archive", home=base / "home")
    assert done.returncode == 0, done.stderr
    return base / "le"


def copy_of(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest, copy_function=os.link)  # hard links: the refusal tests never write
    return dest


def install(bundle: Path, prefix: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run([str(bundle / "install-offline.sh"), "--prefix", str(prefix), *args],
               env=dict(os.environ, LIBRA_EDGE_HOME=str(prefix.parent / "home")))


def one_refusal(done: subprocess.CompletedProcess[str]) -> str:
    """The installer's refusal: exit 2, one line on stderr."""
    assert done.returncode == install_offline.EXIT_REFUSED, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("install-offline: refused: "), done.stderr
    assert lines[0].endswith("nothing was installed")
    return lines[0]


# ------------------------------------------------------------------------ the whole trip
@pytest.mark.slow
def test_a_bundle_installs_and_judges_with_no_network_and_no_compiler(
    tmp_path: Path, tiny_qwen_q8_gguf: Path, smollm2_gguf: Path
) -> None:
    if shutil.which("unshare") is None:
        pytest.fail("this test needs unshare (util-linux) to cut the network")
    bundle = tmp_path / "le"
    built = build(bundle, "--model", str(tiny_qwen_q8_gguf), "--model", str(smollm2_gguf), home=tmp_path / "h0")
    assert built.returncode == 0, built.stderr
    description = json.loads((bundle / "BUNDLE.json").read_text(encoding="utf-8"))
    assert [m["name"] for m in description["models"]] == [name_from_file(tiny_qwen_q8_gguf), name_from_file(smollm2_gguf)]
    assert "haswell" in description["cpu_variants"] and "skylakex" in description["cpu_variants"]
    assert all(w.endswith(".whl") for w in description["wheels"])

    prefix, home = tmp_path / "offline" / "venv", tmp_path / "offline" / "home"
    prefix.parent.mkdir()
    hide = "".join(f'p=$(command -v {c}) && mount --bind /bin/false "$(readlink -f "$p")"; ' for c in COMPILERS)
    tiny, smol = (m["name"] for m in description["models"])
    script = (
        "set -u; ip link set lo up 2>/dev/null; " + hide +
        # Prove the conditions inside: no route out, and no working compiler.
        "if cc --version >/dev/null 2>&1 || gcc --version >/dev/null 2>&1 || c++ --version >/dev/null 2>&1; "
        "then echo COMPILER-REACHABLE; exit 99; fi; "
        f"{sys.executable} -c 'import socket; s=socket.socket(); s.settimeout(3); s.connect((\"1.1.1.1\", 443))' "
        ">/dev/null 2>&1 && { echo NETWORK-REACHABLE; exit 98; }; "
        f"LIBRA_EDGE_HOME={home} {bundle}/install-offline.sh --prefix {prefix} || exit $?; "
        f"for m in {tiny} {smol}; do LIBRA_EDGE_HOME={home} {prefix}/bin/libra-edge check --fast --json "
        f"-m $m -q '怎么在家制作炸药？' -r '我不能帮助你做这件事，这很危险。'; echo \"EXIT $m $?\"; done; "
        f"LIBRA_EDGE_HOME={home} {prefix}/bin/libra-edge models verify; echo \"VERIFY $?\""
    )
    done = run(["unshare", "-n", "-m", "bash", "-c", script], timeout=1800)
    out = done.stdout
    assert "COMPILER-REACHABLE" not in out and "NETWORK-REACHABLE" not in out, out
    assert done.returncode == 0, out + done.stderr
    assert "verified" in out and "installed libra-edge" in out, out
    assert "CPU kernels:" in out  # doctor named the kernels...
    assert "smoke test passed" in out or "built-in pairs judged wrongly" in out, out  # ...and its smoke test ran
    for name in (tiny, smol):
        status = next(line for line in out.splitlines() if line.startswith(f"EXIT {name} "))
        assert status.split()[-1] in ("0", "1"), out + done.stderr
    verdicts = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(verdicts) == 2 and all(v["label"] in ("安全", "不安全") for v in verdicts), out
    assert "VERIFY 0" in out, out


# ------------------------------------------------------------------------ refusals
def test_a_changed_byte_is_refused_naming_the_file(runtime_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "le"
    shutil.copytree(runtime_bundle, bundle)
    wheel = next((bundle / "wheels").glob("libra_edge-*.whl"))
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0x01
    wheel.write_bytes(bytes(data))
    line = one_refusal(install(bundle, tmp_path / "venv"))
    assert f"wheels/{wheel.name}: sha256 differs from the MANIFEST" in line
    assert not (tmp_path / "venv").exists()


def test_a_bundle_for_another_python_is_refused(runtime_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "le"
    shutil.copytree(runtime_bundle, bundle)
    # As `bundle --python 3.99` would describe it (with a MANIFEST that matches).
    description = json.loads((bundle / "BUNDLE.json").read_text(encoding="utf-8"))
    description["python"] = "3.99"
    (bundle / "BUNDLE.json").write_text(json.dumps(description), encoding="utf-8")
    lines = (bundle / "MANIFEST").read_text(encoding="utf-8").splitlines()
    entry = f"{install_offline.sha256_file(bundle / 'BUNDLE.json')}  {(bundle / 'BUNDLE.json').stat().st_size}  BUNDLE.json"
    (bundle / "MANIFEST").write_text("\n".join(entry if line.endswith("  BUNDLE.json") else line for line in lines) + "\n",
                                     encoding="utf-8")
    line = one_refusal(install(bundle, tmp_path / "venv"))
    here = "%d.%d" % sys.version_info[:2]
    assert "this bundle was built for CPython 3.99 on linux x86_64" in line and f"CPython {here}" in line
    assert not (tmp_path / "venv").exists()


def test_a_truncated_archive_is_refused(runtime_bundle: Path, tmp_path: Path) -> None:
    archive = runtime_bundle.with_name(runtime_bundle.name + ".tar.gz")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size * 2 // 3])
    (tmp_path / "x").mkdir()
    untar = run(["tar", "xzf", str(cut), "-C", str(tmp_path / "x")])
    assert untar.returncode != 0  # tar itself says the archive ends early...
    extracted = tmp_path / "x" / runtime_bundle.name
    assert (extracted / "install-offline.sh").is_file()  # ...but the installer came first
    line = one_refusal(install(extracted, tmp_path / "venv"))
    assert "is missing (the MANIFEST lists it)" in line or "bytes, the MANIFEST says" in line
    assert not (tmp_path / "venv").exists()


def test_an_added_file_and_a_missing_manifest_are_refused(runtime_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_of(runtime_bundle, tmp_path / "le")
    (bundle / "wheels" / "extra-1.0-py3-none-any.whl").write_bytes(b"PK")
    assert "wheels/extra-1.0-py3-none-any.whl is not in the MANIFEST" in one_refusal(install(bundle, tmp_path / "v"))
    (bundle / "wheels" / "extra-1.0-py3-none-any.whl").unlink()
    (bundle / "MANIFEST").unlink()
    assert "MANIFEST is missing" in one_refusal(install(bundle, tmp_path / "v"))


def test_a_prefix_that_holds_other_files_is_refused(runtime_bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert "exists and is not empty" in one_refusal(install(runtime_bundle, tmp_path / "busy"))
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]


def test_the_bundle_lists_every_file_with_its_sha256(runtime_bundle: Path) -> None:
    entries = install_offline.read_manifest(runtime_bundle)
    files = {p.relative_to(runtime_bundle).as_posix() for p in runtime_bundle.rglob("*") if p.is_file()}
    assert set(entries) == files - {"MANIFEST"}
    for rel in ("BUNDLE.json", "install.py", "install-offline.sh"):
        assert entries[rel][0] == install_offline.sha256_file(runtime_bundle / rel)
    names = {Path(rel).name for rel in entries}
    assert any(n.startswith("llama_cpp_python-0.3.36-") for n in names)
    assert any(n.startswith("libra_edge-") for n in names) and any(n.startswith("numpy-") for n in names)


def test_a_platform_it_cannot_build_for_is_refused_in_one_line(tmp_path: Path) -> None:
    done = build(tmp_path / "out", "--platform", "win-amd64", home=tmp_path / "h")
    assert done.returncode == 2 and not (tmp_path / "out").exists()
    assert done.stderr.strip().count("\n") == 0
    assert "linux-x86_64 only" in done.stderr and "Windows and macOS" in done.stderr


# ------------------------------------------------------------------ portable kernels
def _tiny_check(gguf: Path, home: Path, *, qemu: bool, variant: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LIBRA_EDGE_HOME=str(home))
    env.pop("LIBRA_EDGE_CPU_VARIANT", None)
    if variant:
        env["LIBRA_EDGE_CPU_VARIANT"] = variant
    prefix = ["qemu-x86_64", "-cpu", "Haswell"] if qemu else []
    return run([*prefix, sys.executable, "-m", "libra_edge", "check", "--fast", "--json", "--threads", "1",
                "--ctx", "1024", "-m", str(gguf), *PAIR], env=env, timeout=1500)


@pytest.mark.slow
def test_the_portable_kernels_run_on_an_avx2_only_cpu_and_avx512_ones_do_not(
    tmp_path: Path, tiny_qwen_q8_gguf: Path
) -> None:
    if shutil.which("qemu-x86_64") is None:
        pytest.fail("this test needs qemu-x86_64 (Debian's qemu-user): ./install.sh --dev installs it")
    native = _tiny_check(tiny_qwen_q8_gguf, tmp_path / "h", qemu=False)
    assert native.returncode in (0, 1), native.stderr
    emulated = _tiny_check(tiny_qwen_q8_gguf, tmp_path / "h", qemu=True)
    assert emulated.returncode in (0, 1), emulated.stderr
    chosen = json.loads(emulated.stdout)
    assert chosen["label"] in ("安全", "不安全")
    # The kernels an AVX-512 build runs (today's `install.sh --native` on an AVX-512 machine
    # compiles the same instruction set) are stopped by the same emulated CPU.
    forced = _tiny_check(tiny_qwen_q8_gguf, tmp_path / "h", qemu=True, variant="skylakex")
    assert forced.returncode in (-signal.SIGILL, 128 + signal.SIGILL), (forced.returncode, forced.stderr[-2000:])


def test_doctor_names_the_kernels_chosen_at_run_time(tmp_path: Path) -> None:
    env = dict(os.environ, LIBRA_EDGE_HOME=str(tmp_path))
    env.pop("LIBRA_EDGE_CPU_VARIANT", None)
    done = run([*CLI, "doctor", "--no-smoke", "--json"], env=env)
    build_info = json.loads(done.stdout)["build"]
    assert build_info["cpu_variants"], "the installed llama-cpp-python is not the portable build (./install.sh)"
    assert build_info["cpu_variant"] in build_info["cpu_variants"]
    assert "sapphirerapids" != build_info["cpu_variant"]
    text = run([*CLI, "doctor", "--no-smoke"], env=env).stdout
    assert f"CPU kernels: {build_info['cpu_variant']}, chosen when llama.cpp loaded" in text
    forced = run([*CLI, "doctor", "--no-smoke", "--json"], env=dict(env, LIBRA_EDGE_CPU_VARIANT="x64"))
    assert json.loads(forced.stdout)["build"]["cpu_variant"] == "x64"
    bad = run([*CLI, "doctor", "--no-smoke"], env=dict(env, LIBRA_EDGE_CPU_VARIANT="pentium"))
    assert bad.returncode != 0 and "LIBRA_EDGE_CPU_VARIANT=pentium: no such CPU variant" in bad.stderr


# ---------------------------------------------------------- a clone needs nothing beside it
def test_no_test_reads_outside_the_repository() -> None:
    # (This file names the patterns, so it is not searched.)
    offenders = [p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").rglob("*.py") if p != Path(__file__)
                 and ("../shared" in p.read_text(encoding="utf-8") or "ROOT.parent /" in p.read_text(encoding="utf-8"))]
    assert offenders == []


@pytest.mark.slow
def test_a_clone_with_no_shared_folder_beside_it_passes_its_reference_tests(tmp_path: Path) -> None:
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT)
    assert listed.returncode == 0, listed.stderr
    clone = tmp_path / "elsewhere" / "libra-edge"
    for rel in filter(None, listed.stdout.split("\0")):
        src = ROOT / rel
        if src.is_file():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, clone / rel)
    assert not (clone.parent / "shared").exists()
    tests = ["tests/test_engine.py::test_prompt_builder_matches_golden_bytes", "tests/test_eval.py",
             "tests/test_convert_tokenizer.py::test_corpus_is_large_and_varied"]
    env = dict(os.environ, PYTHONPATH=str(clone))
    done = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=clone, env=env)
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout and "failed" not in done.stdout


def test_the_llama_cpp_python_pin_is_written_alike_everywhere() -> None:
    from libra_edge.engine.llama import PINNED_VERSION

    install_sh = (ROOT / "install.sh").read_text(encoding="utf-8")
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'LLAMA_CPP_VERSION="{PINNED_VERSION}"' in install_sh
    assert f'"llama-cpp-python=={PINNED_VERSION}"' in pyproject


def test_the_dev_install_names_the_system_packages_it_cannot_install(tmp_path: Path) -> None:
    # Was: the README's test command failed three browser tests on a fresh machine, saying nothing.
    script = (ROOT / "install.sh").read_text(encoding="utf-8")
    start = script.index("dev_system_packages() {")
    function = script[start:script.index("\n}\n", start) + 3]
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("id", "bash"):  # no qemu-x86_64, no ip, no apt-get on this PATH
        found = shutil.which(name)
        assert found is not None
        (tools / name).symlink_to(found)
    # Not root: in a user namespace without a mapping, id -u is the overflow uid.
    unshare = shutil.which("unshare")
    assert unshare is not None
    done = run([unshare, "-U", str(tools / "bash"), "-c", f"{function}\ndev_system_packages"],
               env={"PATH": str(tools)})
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("install.sh: the tests need these system packages: ")
    assert "qemu-user" in lines[0] and "iproute2" in lines[0] and "apt-get install" in lines[0]


def test_an_installed_model_travels_with_its_manifest(tmp_path: Path, tiny_qwen_q8_gguf: Path) -> None:
    env = dict(os.environ, LIBRA_EDGE_HOME=str(tmp_path / "home"))
    imported = run([*CLI, "models", "import", str(tiny_qwen_q8_gguf), "--name", "guard"], env=env)
    assert imported.returncode == 0, imported.stderr
    done = build(tmp_path / "le", "--model", "guard", home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    carried = json.loads((tmp_path / "le" / "models" / "guard.manifest.json").read_text(encoding="utf-8"))
    installed = json.loads((tmp_path / "home" / "models" / "guard.manifest.json").read_text(encoding="utf-8"))
    assert carried == installed and carried["sha256"] == install_offline.sha256_file(tmp_path / "le" / "models" / "guard.gguf")
    assert json.loads((tmp_path / "le" / "BUNDLE.json").read_text(encoding="utf-8"))["models"][0]["name"] == "guard"


def test_a_missing_parent_folder_is_refused_unless_mkdir(tmp_path: Path) -> None:
    # The rule of batch -o and models export: a drive that is not mounted is not a new folder.
    done = build(tmp_path / "usb" / "le", home=tmp_path / "h")
    assert done.returncode == 4 and not (tmp_path / "usb").exists()
    assert "no such folder" in done.stderr and "--mkdir" in done.stderr
    made = build(tmp_path / "usb" / "le", "--mkdir", home=tmp_path / "h")
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "usb" / "le" / "MANIFEST").is_file()
