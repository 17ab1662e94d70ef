"""End-to-end wall time of `vit predict IMAGE --model M`, ONNX beside safetensors.

    python benchmarks/predict_startup.py                 # a ViT-Ti/16 with random weights
    python benchmarks/predict_startup.py --model m.safetensors --image cat.jpg -n 9

Each run is a fresh process (`python -m vitcli predict ...`), timed from spawn to exit after
the result is printed: interpreter start, imports, opening the model, one image, output.
The ONNX path must not import torch; the goal (issue 4) is under 0.6 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GOAL_S = 0.6


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a vitcli .safetensors model file")
    parser.add_argument("--image", type=Path, help="the image to predict")
    parser.add_argument("--preset", default="vit-ti16", help="without --model (default ViT-Ti/16)")
    parser.add_argument("-n", "--repeats", type=int, default=7, help="runs per model (median)")
    return parser.parse_args()


def time_predict(model: Path, image: Path, repeats: int) -> tuple[float, list[float]]:
    """Median and all wall times of a fresh `python -m vitcli predict` process."""
    command = [sys.executable, "-m", "vitcli", "predict", str(image), "--model", str(model)]
    times = []
    for _ in range(repeats + 1):  # the first run warms the OS file cache; not counted
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"vit predict failed: {done.stderr.strip()}")
    return statistics.median(times[1:]), times[1:]


def main() -> None:
    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="vit-startup-"))
    model = args.model or make_random_model(args.preset, workdir)
    image = args.image or make_image(workdir / "image.jpg")
    onnx = workdir / "model.onnx"
    from vitcli.deploy.export import export_onnx

    print(f"exporting {model} → {onnx}", file=sys.stderr)
    export_onnx(model, onnx)
    print(f"`vit predict {image.name} --model M`, fresh process each run, "
          f"median of {args.repeats}:")
    results = {}
    for label, path in (("ONNX (onnxruntime, no torch)", onnx), ("safetensors (PyTorch)", model)):
        median, times = time_predict(path, image, args.repeats)
        results[label] = median
        spread = f"{min(times):.3f}-{max(times):.3f}"
        print(f"  {label:<30} {median:.3f} s   (range {spread} s)")
    onnx_s = results["ONNX (onnxruntime, no torch)"]
    print(f"goal ONNX < {GOAL_S} s: {'met' if onnx_s < GOAL_S else 'MISSED'}; "
          f"ONNX is {results['safetensors (PyTorch)'] / onnx_s:.1f}× faster to an answer")


def make_random_model(preset: str, workdir: Path) -> Path:
    from vitcli.model.checkpoint import save_model
    from vitcli.model.vit import create_model

    return save_model(workdir / f"{preset}.safetensors", create_model(preset, num_classes=1000))


def make_image(path: Path) -> Path:
    """A 640×480 photo-sized JPEG, so decoding and resizing cost what they would."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(path, quality=90)
    return path


if __name__ == "__main__":
    main()
