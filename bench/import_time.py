"""How long ``import atoll`` takes: ``python -X importtime -c "import atoll"``, N times.

Prints JSON with the median and worst cumulative import time of the ``atoll``
package (what it and everything it imports costs), and of the full public API.

    python bench/import_time.py [--repeat 15] [--write]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import Any


def cumulative_us(code: str, module: str) -> int:
    """The cumulative import time of ``module`` in a fresh interpreter running ``code``."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        check=True,
    )
    for line in result.stderr.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[2] == module:
            return int(parts[1])
    raise RuntimeError(f"no importtime line for {module}")


def measure(repeat: int) -> dict[str, Any]:
    package = [cumulative_us("import atoll", "atoll") for _ in range(repeat)]
    factory = [
        cumulative_us("import atoll.runtime.factory", "atoll.runtime.factory")
        for _ in range(repeat)
    ]
    return {
        "repeat": repeat,
        "import_atoll_ms_median": round(statistics.median(package) / 1000, 2),
        "import_atoll_ms_max": round(max(package) / 1000, 2),
        "import_runtime_factory_ms_median": round(statistics.median(factory) / 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    output = measure(args.repeat)
    print(json.dumps(output, indent=2))
    if args.write:
        from report import write_section

        write_section(
            "import-time", "python " + " ".join(["bench/import_time.py", *sys.argv[1:]]), output
        )


if __name__ == "__main__":
    main()
