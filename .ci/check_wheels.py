"""Install every package's wheel alone in a clean virtual environment and run its CLI.

Each venv receives only the package's wheel, the wheels of the workspace packages it depends on
(given as files, so uv must accept their versions against the declared ranges: a range that drifted
from a member's real version fails here) and third-party dependencies from the index. Then the
package must import, its console script must answer --help and --version, and ov_packing's compiled
module must load.
"""

import argparse
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Member:
    """One workspace package as declared in its pyproject.toml."""

    folder: str
    name: str
    version: str
    requirements: tuple[str, ...]
    scripts: tuple[str, ...]


def normalise(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_members() -> dict[str, Member]:
    members = {}
    for pyproject in sorted(ROOT.glob("packages/*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text())["project"]
        requirements = tuple(
            normalise(re.match(r"[A-Za-z0-9._-]+", req).group(0)) for req in project["dependencies"]
        )
        members[normalise(project["name"])] = Member(
            folder=pyproject.parent.name,
            name=normalise(project["name"]),
            version=project["version"],
            requirements=requirements,
            scripts=tuple(project.get("scripts", {})),
        )
    return members


def internal_closure(member: Member, members: dict[str, Member]) -> list[Member]:
    """The member and every workspace package it needs, directly or not."""
    seen: dict[str, Member] = {}
    stack = [member]
    while stack:
        current = stack.pop()
        if current.name in seen:
            continue
        seen[current.name] = current
        stack.extend(members[req] for req in current.requirements if req in members)
    return list(seen.values())


def wheel_for(member: Member, dist: Path) -> Path:
    pattern = f"{member.name.replace('-', '_')}-{member.version}-*.whl"
    found = sorted(dist.glob(pattern))
    if len(found) != 1:
        raise SystemExit(f"error: expected one wheel {pattern} in {dist}, found {found}")
    return found[0]


def run(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stdout, result.stderr, sep="\n", file=sys.stderr)
        raise SystemExit(f"error: command failed ({result.returncode}): {' '.join(command)}")
    return result.stdout


def check(
    member: Member, members: dict[str, Member], dist: Path, venvs: Path, uv: list[str]
) -> None:
    venv = venvs / member.folder
    run([*uv, "venv", "--quiet", "--python", sys.executable, str(venv)])
    python = venv / "bin" / "python"
    wheels = [str(wheel_for(m, dist)) for m in internal_closure(member, members)]
    run([*uv, "pip", "install", "--quiet", "--python", str(python), *wheels])
    run([str(python), "-c", f"import {member.folder}; assert {member.folder}.__version__"])
    if member.folder == "ov_packing":
        run(
            [
                str(python),
                "-c",
                "import ov_packing._core as c; assert c.lower_bound_bins([3], 4) == 1",
            ]
        )
    for script in member.scripts:
        usage = run([str(venv / "bin" / script), "--help"])
        version = run([str(venv / "bin" / script), "--version"]).strip()
        if (
            not usage.startswith(f"Usage: {script}")
            or version != f"{script}, version {member.version}"
        ):
            raise SystemExit(f"error: {script} answered {usage[:80]!r} / {version!r}")
    print(
        f"{member.name:<12} {member.version}: wheel installs alone ({len(wheels)} wheels), CLI ok"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dist", type=Path, required=True, help="folder holding the built wheels")
    parser.add_argument("--venvs", type=Path, required=True, help="folder for the clean venvs")
    parser.add_argument("--uv", default="uv", help="how to call uv (for example 'python3 -m uv')")
    args = parser.parse_args()
    members = read_members()
    for member in members.values():
        check(member, members, args.dist, args.venvs, args.uv.split())


if __name__ == "__main__":
    main()
