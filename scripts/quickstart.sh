#!/usr/bin/env bash
# Install vitcli (scripts/install.sh: the CPU build of torch on a Linux machine without an NVIDIA
# GPU, when no torch is installed yet) and run the whole life cycle on the
# bundled example data: patchify → train → eval → predict (+ explain) → export ONNX.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh

out=runs/quickstart
rm -rf "$out"
vit patchify examples/photos/cat.jpg --patch 16 --out "$out/patchify"
vit train --data examples/shapes --time-budget 0.75 --project "$out" --name train
model="$out/train/weights/best.safetensors"
vit eval --model "$model" --data examples/shapes/val --out "$out/eval"
vit predict examples/shapes/val/ring/000.png examples/shapes/val/cross/000.png \
    --model "$model" --explain "$out/explain"
vit export --onnx --model "$model" --out "$out/model.onnx" --int8 --data examples/shapes/val
vit predict examples/shapes/val/triangle/ --model "$out/model.onnx" --topk 1 --csv "$out/predictions.csv"
echo "Everything is in $out/"
