"""CLI start-up: `securecomm --help` and a completion request vs `import click`.

Run: python benchmarks/cli_startup.py [--runs N] [--json FILE]
Target (issue 2): median `securecomm --help` at most 1.5x `python -c "import click"`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import entry_point, median_ms, wall, write_json


def measure(runs: int) -> dict[str, float]:
    sc = entry_point()
    # Interleave so that a busy moment on the machine hits every command alike.
    base, helps, comps = [], [], []
    for _ in range(runs):
        base += wall([sys.executable, "-c", "import click"], 1)
        helps += wall([sc, "--help"], 1)
        comps += wall([sc], 1, env={"_SECURECOMM_COMPLETE": "bash_complete", "COMP_WORDS": "securecomm us",
                                    "COMP_CWORD": "1"})
    b, h, c = median_ms(base), median_ms(helps), median_ms(comps)
    return {"import_click_ms": b, "help_ms": h, "complete_ms": c, "help_ratio": h / b, "complete_ratio": c / b}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    r = measure(args.runs)
    print(f"python -c 'import click'  median {r['import_click_ms']:7.1f} ms")
    print(f"securecomm --help         median {r['help_ms']:7.1f} ms  ratio {r['help_ratio']:.2f}x (target <= 1.5x)")
    print(f"completion request        median {r['complete_ms']:7.1f} ms  ratio {r['complete_ratio']:.2f}x")
    print("wrote", write_json("cli_startup", {"runs": args.runs, **r}, args.json))


if __name__ == "__main__":
    main()
