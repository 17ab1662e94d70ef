#!/usr/bin/env bash
# The life cycle on a CUDA GPU, for the paths CI (CPU only) never runs: training with bf16
# autocast and augmentation on the GPU, --compile, Ctrl-C then --resume, torchrun with NCCL,
# eval and predict on the GPU, export of a GPU-trained model, and the GPU throughput benchmark.
#   bash scripts/gpu_check.sh [OUT_DIR]      (vitcli installed, or run from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu-check}
vit=(python3 -m vitcli)
rm -rf "$out"
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; \
print('torch', torch.__version__, torch.cuda.get_device_name())"

step() { echo; echo "=== $*"; }

step "train on cuda (bf16 autocast, GPU augmentation)"
"${vit[@]}" train --data examples/shapes --device cuda --epochs 100 --project "$out" --name cuda
model="$out/cuda/weights/best.safetensors"

step "train on cuda with --compile"
"${vit[@]}" train --data examples/shapes --device cuda --epochs 3 --compile \
    --project "$out" --name compile

step "Ctrl-C after 12 s, then --resume on the GPU"
timeout -s INT 12 "${vit[@]}" train --data examples/shapes --device cuda --epochs 600 \
    --project "$out" --name resume || echo "exit code $? (interrupted)"
test -f "$out/resume/state.json" || { echo "no saved state in $out/resume"; exit 1; }
"${vit[@]}" train --resume "$out/resume" --device cuda

step "torchrun, 1 process, NCCL"
torchrun --standalone --nproc_per_node 1 -m vitcli train --data examples/shapes --device cuda \
    --epochs 3 --project "$out" --name ddp

step "eval and predict on cuda"
"${vit[@]}" eval --model "$model" --data examples/shapes/val --device cuda --out "$out/eval" \
    --json "$out/eval.json"
"${vit[@]}" eval --model "$model" --data examples/shapes/val --device cpu --out "$out/eval-cpu" \
    --json "$out/eval-cpu.json"
python3 - "$out" <<'EOF'
import json, sys
g, c = (json.load(open(f"{sys.argv[1]}/{n}.json")) for n in ("eval", "eval-cpu"))
print(f"top-1 on the GPU {g['top1']:.2%}, on the CPU {c['top1']:.2%}")
assert g["top1"] >= 0.9, "the GPU-trained model did not learn the shapes"
assert abs(g["top1"] - c["top1"]) <= 0.02, "GPU and CPU evaluations disagree"
EOF
"${vit[@]}" predict examples/shapes/val/ring/000.png --model "$model" --device cuda \
    --explain "$out/explain"

step "export a GPU-trained model"
"${vit[@]}" export --onnx --model "$model" --out "$out/model.onnx" --data examples/shapes/val

step "training throughput on the GPU against transformers' ViT"
python3 benchmarks/train_throughput.py --device cuda
