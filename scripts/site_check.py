"""Check a ``pip install --target DIR`` site against the interpreter it will run under, and with
``--fix`` install fallback wheels for what the interpreter's own packages miss.

On a GPU image the wheelhouse is installed with ``--no-deps --target /tmp/site`` on top of the
image's packages, so pip checks nothing. This lists, for every distribution in DIR, each
requirement that ``sys.path`` (DIR first, via PYTHONPATH) does not meet; ``--fix FOLDER`` then
installs, from FOLDER (a wheelhouse's ``fallback/``), a wheel that does meet it.

    PYTHONPATH=/tmp/site python3 scripts/site_check.py /tmp/site --fix wheelhouse-gpu/fallback --ignore kronfluence
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ImportError:  # pip always carries a copy
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]
    from pip._vendor.packaging.version import Version  # type: ignore[no-redef]


def installed_version(name: str) -> str | None:
    """The version the interpreter imports (first on sys.path), or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def unmet(site: Path, ignore: set[str]) -> list[tuple[str, Requirement, str | None]]:
    """(distribution, requirement, installed version or None) for every unmet requirement."""
    out = []
    for dist in metadata.distributions(path=[str(site)]):
        owner = canonicalize_name(dist.metadata["Name"])
        if owner in ignore:
            continue
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            have = installed_version(req.name)
            if have is None or not req.specifier.contains(Version(have), prereleases=True):
                out.append((owner, req, have))
    return out


def fallback_for(req: Requirement, folder: Path) -> Path | None:
    for wheel in sorted(folder.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        if canonicalize_name(name) == canonicalize_name(req.name) and req.specifier.contains(Version(version), prereleases=True):
            return wheel
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("site", type=Path, help="the --target folder (also on PYTHONPATH)")
    ap.add_argument("--fix", type=Path, default=None, help="folder of fallback wheels")
    ap.add_argument("--ignore", action="append", default=[], help="skip this distribution's requirements")
    ap.add_argument("--strict", action="store_true", help="exit 1 when requirements stay unmet")
    args = ap.parse_args(argv)
    ignore = {canonicalize_name(n) for n in args.ignore}
    problems = unmet(args.site, ignore)
    if args.fix is not None:
        wheels = {str(w) for _, req, _ in problems if (w := fallback_for(req, args.fix)) is not None}
        if wheels:
            print("site_check: installing fallbacks:", ", ".join(sorted(Path(w).name for w in wheels)))
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                            "--upgrade", "--target", str(args.site), *sorted(wheels)], check=True)
            problems = unmet(args.site, ignore)
    for owner, req, have in problems:
        print(f"site_check: {owner} needs {req}: {'missing' if have is None else have}")
    print(f"site_check: {len(problems)} unmet requirement(s) in {args.site}")
    return 1 if problems and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
