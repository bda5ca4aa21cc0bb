"""The libraries scripts/build-deb.sh vendors into the Debian package (/opt/edge-agent/lib), checked
before they are packed. Run by the Python that builds the package (it has ``packaging``, a
dependency of ``build``).

``missing LIB [--ignore NAME ...]`` prints, one per line for pip, what any Python from 3.10 on,
on any of the package's architectures, needs beyond what LIB holds. pip evaluates environment
markers for the Python that runs it only: built with 3.11, it leaves out tomli and
typing_extensions, which 3.10 needs. A requirement LIB holds in a version that does not satisfy
it is an error.

``check LIB`` fails unless every distribution in LIB is pure Python (a ``none-any`` wheel, no
compiled module): that is what lets one ``Architecture: all`` package serve armhf, arm64 and
amd64. It prints each distribution's name and version.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from importlib.metadata import Distribution, PathDistribution
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

#: The agent's own distribution, where the walk through the requirements starts.
ROOT = "edge-agent"
#: Every Python the package may meet (Debian 12: 3.11, Debian 13: 3.13; 3.10 is the floor).
PYTHONS = ("3.10", "3.11", "3.12", "3.13", "3.14")
#: ``platform_machine`` of the gateways the package serves: amd64, arm64, armhf.
MACHINES = ("x86_64", "aarch64", "armv7l")


def distributions(lib: Path) -> dict[str, Distribution]:
    """The distributions installed in ``lib``, by canonical name."""
    found = (PathDistribution(path) for path in sorted(lib.glob("*.dist-info")))
    return {canonicalize_name(dist.metadata["Name"]): dist for dist in found}


def environments() -> Iterator[dict[str, str]]:
    """Marker environments of every Python and machine the package may run on (Debian's
    CPython on Linux)."""
    base = {key: str(value) for key, value in default_environment().items()}
    for python in PYTHONS:
        for machine in MACHINES:
            yield {
                **base,
                "implementation_name": "cpython",
                "platform_python_implementation": "CPython",
                "python_version": python,
                "python_full_version": f"{python}.0",
                "platform_machine": machine,
                "platform_system": "Linux",
                "sys_platform": "linux",
                "os_name": "posix",
            }


def needed(dist: Distribution, extras: frozenset[str]) -> Iterator[Requirement]:
    """``dist``'s requirements that apply somewhere, with the ``extras`` asked of it."""
    for line in dist.requires or ():
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or any(
            marker.evaluate({**env, "extra": extra})
            for env in environments()
            for extra in extras or {""}
        ):
            yield requirement


def pip_form(requirement: Requirement) -> str:
    """The requirement without its marker: the marker was evaluated here, not by pip."""
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    return f"{requirement.name}{extras}{requirement.specifier}"


def missing(lib: Path, ignore: set[str]) -> tuple[list[str], list[str]]:
    """What LIB lacks (pip requirements) and what it holds in a wrong version (problems)."""
    dists = distributions(lib)
    if ROOT not in dists:
        return [], [f"{lib} holds no {ROOT} distribution"]
    wanted: list[str] = []
    problems: list[str] = []
    todo, seen = [(ROOT, frozenset[str]())], set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for requirement in needed(dists[name], extras):
            key = canonicalize_name(requirement.name)
            have = dists.get(key)
            if key in ignore:
                continue
            if have is None:
                if pip_form(requirement) not in wanted:
                    wanted.append(pip_form(requirement))
                continue
            if not requirement.specifier.contains(have.version, prereleases=True):
                problems.append(f"{name} needs {requirement}, {lib} has {key} {have.version}")
            todo.append((key, frozenset(requirement.extras)))
    return wanted, problems


def impure(lib: Path) -> list[str]:
    """Why LIB is not pure Python: wheels tagged for a platform, compiled modules."""
    problems = []
    for name, dist in distributions(lib).items():
        wheel = (dist.read_text("WHEEL") or "").splitlines()
        tags = [line.split(":", 1)[1].strip() for line in wheel if line.startswith("Tag:")]
        if not tags or any(not tag.endswith("-none-any") for tag in tags):
            problems.append(f"{name} {dist.version} is not a pure-Python wheel (tags: {tags})")
    problems += [f"{path} is compiled code" for path in sorted(lib.rglob("*.so*"))]
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vendored.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("missing", "check"))
    parser.add_argument("lib", type=Path)
    parser.add_argument("--ignore", nargs="*", default=[], help="requirements never to add")
    args = parser.parse_args(argv)
    if args.action == "missing":
        wanted, problems = missing(args.lib, {canonicalize_name(n) for n in args.ignore})
        print("\n".join(wanted))
    else:
        problems = impure(args.lib)
        if not problems:
            dists = distributions(args.lib).values()
            print(" ".join(sorted(f"{d.metadata['Name']} {d.version}," for d in dists)).rstrip(","))
    for problem in problems:
        print(f"vendored.py: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
