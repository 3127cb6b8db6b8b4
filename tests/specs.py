"""Where the official OpenAPI documents of the PSAs live: `shared/psa/specs/` beside the repository
(as on every developer machine and on CI), or under SEATSYNC_SHARED."""

import os
from pathlib import Path

SHARED = Path(os.environ.get("SEATSYNC_SHARED") or Path(__file__).resolve().parents[2] / "shared")


def spec_path(name: str) -> Path:
    path = SHARED / "psa" / "specs" / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the spec-conformance tests need shared/ beside the "
                                "repository (or SEATSYNC_SHARED pointing at it)")
    return path
