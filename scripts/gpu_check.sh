#!/usr/bin/env bash
# Every GPU check in one run (about 8 minutes on one H100/H200), figures into one JSON file.
#
#   bash scripts/gpu_check.sh [OUT_DIR] [BENCHMARK_JPEGS]
#
# OUT_DIR (default: $OUT or runs/gpu_check) receives gpu_check.json and the logs. BENCHMARK_JPEGS (default:
# data/imagenet_like) is a folder written by scripts/make_benchmark_jpegs.py; the input check is skipped
# when it is absent. Installs nothing: run it where naraim's dependencies are installed (or on PYTHONPATH).
#   1. the GPU tests (cuDNN attention against the einsum core, no leak across packed images) and the model
#      and packing tests
#   2. ViT-B/14 bf16 training step at batch 256: cuDNN and XLA attention, and the float32 residual stream of
#      configs/naraim_b14.py against a bfloat16 one; configs/naraim_b14.py:native (rows of 1,024 tokens)
#      on the benchmark JPEGs, one image per row and packed
#   3. the input pipeline with 14 workers on the benchmark JPEGs (NARAIM's training transforms)
#   4. a 300-step pre-training of B/14 on synthetic images, SIGKILLed after a checkpoint and resumed
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-runs/gpu_check}}"
jpegs="${2:-data/imagenet_like}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
json="$out/gpu_check.json"
echo "{}" > "$json"

record() {  # record KEY JSON_VALUE
  python - "$json" "$1" "$2" <<'EOF'
import json, sys
path, key, value = sys.argv[1:]
data = json.load(open(path))
data[key] = json.loads(value)
json.dump(data, open(path, "w"), indent=1)
EOF
}

record meta "$(python -c "import jax, json, subprocess, datetime; print(json.dumps({'date': datetime.date.today().isoformat(), 'commit': subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip() or 'unknown', 'device': jax.devices()[0].device_kind, 'jax': jax.__version__}))")"

echo "== 1. GPU and model tests"
timeout 240 python -m pytest -q -p no:cacheprovider tests/test_attention_gpu.py tests/test_attention.py \
  tests/test_model_forward.py tests/test_model_precision.py tests/test_packing_model.py 2>&1 | tee "$out/tests.log" | tail -3
record tests "$(tail -1 "$out/tests.log" | python -c 'import json, sys; print(json.dumps(sys.stdin.read().strip()))')"

echo "== 2. B/14 bf16 training step, batch 256"
bench() {  # bench NAME ARGS...
  local name=$1; shift
  timeout 100 python scripts/benchmark_train.py --config configs/naraim_b14.py --config.data.source=synthetic \
    --config.batch_size=256 --steps 20 "$@" > "$out/step_$name.json" 2> "$out/step_$name.log" \
    && record "step_$name" "$(cat "$out/step_$name.json")" \
    || record "step_$name" "\"failed: $(tail -1 "$out/step_$name.log" | tr '"' "'")\""
}
bench cudnn_f32_residual
bench xla_f32_residual --config.model.attention_impl=xla
bench cudnn_bf16_residual --config.model.residual_dtype=
bench cudnn_bf16_residual_per_patch --config.model.residual_dtype= --config.loss.average=per_patch

if [ -d "$jpegs" ]; then  # native resolution at N = 1,024 on real photos: one image per row, then packed
  for packing in none first_fit; do
    name="native_$packing"
    timeout 150 python scripts/benchmark_train.py --config configs/naraim_b14.py:native \
      --config.data.source="folder:$jpegs" --config.data.packing=$packing --config.batch_size=64 \
      --data_batches 4 --steps 20 > "$out/step_$name.json" 2> "$out/step_$name.log" \
      && record "step_$name" "$(cat "$out/step_$name.json")" \
      || record "step_$name" "\"failed: $(tail -1 "$out/step_$name.log" | tr '"' "'")\""
  done
fi

echo "== 3. input pipeline, 14 workers"
if [ -d "$jpegs" ]; then
  timeout 90 python scripts/benchmark_input.py --source "folder:$jpegs" --num_workers 14 --batch_size 256 \
    --batches 8 --repeats 3 --profile_examples 0 2> "$out/input.log" | tail -1 > "$out/input.json" \
    && record input "$(cat "$out/input.json")" || record input '"failed"'
else
  record input "\"skipped: no $jpegs (scripts/make_benchmark_jpegs.py writes it)\""
fi

echo "== 4. 300 steps of B/14 on synthetic images, SIGKILL and resume"
run="$out/e2e"
rm -rf "$run"
args=(--config configs/naraim_b14.py --workdir "$run" --config.data.source=synthetic --config.batch_size=256
      --config.data.num_workers=14 --config.total_steps=300 --config.optim.warmup_steps=30
      --config.optim.cooldown_steps=30 --config.log_every=50 --config.eval_every=300
      --config.eval.num_examples=2048 --config.checkpoint_every=100 --config.wandb.mode=disabled)
start=$(date +%s)
python scripts/pretrain.py "${args[@]}" > "$out/e2e_first.log" 2>&1 &
pid=$!
while kill -0 $pid 2>/dev/null && [ ! -d "$run/checkpoints/100" ]; do sleep 1; done
sleep 5
kill -9 $pid 2>/dev/null
wait $pid 2>/dev/null
timeout 240 python scripts/pretrain.py "${args[@]}" > "$out/e2e_resume.log" 2>&1
status=$?
record e2e "$(python - "$run" "$status" "$start" <<'EOF'
import json, sys, time
run, status, start = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = [json.loads(line) for line in open(f"{run}/metrics.jsonl")] if status == 0 else []
train = [r for r in rows if r["split"] == "train"]
val = [r for r in rows if r["split"] == "val"]
print(json.dumps({
    "exit_status": status, "seconds": time.time() - start,
    "images_per_sec": [round(r["images_per_sec"]) for r in train],
    "steps_logged": [r["step"] for r in train],
    "val": val[-1] if val else None,
}))
EOF
)"
echo "figures: $json"
cat "$json"
