"""How long `vit --help` takes, and whether it imported torch (it must not).

    python benchmarks/cli_startup.py            # 10 runs
    python benchmarks/cli_startup.py --runs 20 --goal 0.3

Each run is a fresh `python -m vitcli --help` process, timed wall-clock from spawn to exit,
and likewise the installed `vit` console script beside the interpreter, when there is one.
For reference the same is timed for a bare `python -c pass` (interpreter start-up alone) and
for `python -c "import torch"` (what a torch import would add), all interleaved so that load
from other processes hits each alike. The torch check runs once more with `-X importtime`,
which lists every module the interpreter imported.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # so that `-m vitcli` finds the checkout


def wall_time(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def imported_modules(args: list[str]) -> set[str]:
    """Top-level package names imported by a run, read from `python -X importtime`."""
    done = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=ROOT, check=True,
                          capture_output=True, text=True)
    names = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--goal", type=float, default=0.3, help="seconds")
    args = parser.parse_args()
    commands = {
        "vit --help": ["-m", "vitcli", "--help"],
        "python (bare)": ["-c", "pass"],
        "import torch": ["-c", "import torch"],
    }
    script = Path(sys.executable).with_name("vit")  # the installed console script, if any
    if script.exists():
        commands["vit script"] = [str(script), "--help"]
    for command in commands.values():  # warm the file cache
        wall_time(command)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, command in commands.items():
            times[name].append(wall_time(command))
    modules = imported_modules(commands["vit --help"])
    print(f"median wall time of {args.runs} runs each (python {sys.version.split()[0]}):")
    for name, t in times.items():
        print(f"  {name:<14} {statistics.median(t):6.3f} s   (min {min(t):.3f} s)")
    # The verdict goes by the slower of the two ways in: `python -m vitcli` and the script.
    help_time = max(statistics.median(times[name]) for name in ("vit --help", "vit script")
                    if name in times)
    verdict = "meets" if help_time < args.goal else "MISSES"
    print(f"`vit --help` {verdict} the {args.goal:.2f} s goal; "
          f"torch imported: {'YES' if 'torch' in modules else 'no'}; "
          f"matplotlib imported: {'yes' if 'matplotlib' in modules else 'no'}")
    sys.exit(0 if help_time < args.goal and "torch" not in modules else 1)


if __name__ == "__main__":
    main()
