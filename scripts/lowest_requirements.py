"""Print the lowest versions pyproject.toml declares, one ``name==floor`` a line (CI's lowest-versions step).

Reads ``[project] dependencies`` and ``[project.optional-dependencies] dev`` and turns every ``>=X`` floor
into ``==X``. ``--except NAME`` keeps a package out (its pinned version from constraints.txt is used
instead; CI does this for torch, whose floor is a multi-GB CUDA wheel -- see .ci/run).

    python scripts/lowest_requirements.py --except torch > lowest.txt
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

def _requirements(text: str, extras) -> list[str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the two arrays read by pattern (one string per item)
        arrays = [re.search(rf"^{k}\s*=\s*\[(.*?)\]", text, re.S | re.M) for k in ("dependencies", *extras)]
        return [r for a in arrays if a for r in re.findall(r'"([^"]+)"', a.group(1))]
    meta = tomllib.loads(text)["project"]
    return list(meta["dependencies"]) + [r for e in extras for r in meta.get("optional-dependencies", {}).get(e, [])]


def floors(pyproject: Path, extras=("dev",)) -> dict[str, str]:
    reqs = _requirements(pyproject.read_text(), extras)
    out = {}
    for r in reqs:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][^,;\s]*)\s*", r)
        if not m:
            raise SystemExit(f"lowest_requirements: no single '>=' floor in {r!r}")
        out[m.group(1)] = m.group(2)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--except", dest="skip", action="append", default=[])
    args = ap.parse_args(argv)
    for name, v in floors(Path(__file__).resolve().parents[1] / "pyproject.toml").items():
        if name not in args.skip:
            print(f"{name}=={v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
