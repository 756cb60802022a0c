#!/usr/bin/env bash
# One Slurm array task per shard of an experiment; every task shares the run directory
# (generation 0 of a seed is built once, by the first task that needs it).
#
#   sbatch --array=0-7 --gpus-per-task=1 scripts/slurm_array.sh configs/shumailov2023.yaml 8
#   sbatch --array=0-1 --cpus-per-task=2 --mem=8G scripts/slurm_array.sh configs/quickstart.yaml 2
#   # when they are done (or while they run: the report shows what is finished)
#   lmcollapse report runs/shumailov2023
#
# Arguments: the config, the number of shards (= the array size), then any overrides.
# `lmcollapse cells --config CONFIG` lists the (seed, cell) units; use at most that many
# shards. No GPU is asked for here (a CPU partition refuses a GPU request): add
# `--gpus-per-task=1` on a GPU partition; options on the sbatch command line override the
# lines below. For several GPUs per task, ask for them and replace `python` with
# `accelerate launch --config_file configs/accelerate/multi_gpu.yaml --num_processes <gpus>`.
# The tasks use the environment in $LMCOLLAPSE_VENV (default: .venv under the submit
# directory, if there is one; else the python on PATH), and lmcollapse as installed there
# (an editable install: the checkout's code).
#SBATCH --job-name=lmcollapse
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%A_%a.out
set -euo pipefail
config=$1
shards=$2
shift 2
cd "${SLURM_SUBMIT_DIR:-.}"
venv=${LMCOLLAPSE_VENV:-.venv}
if [ -f "$venv/bin/activate" ]; then . "$venv/bin/activate"; fi
python scripts/run_loop.py --config "$config" "$@" --shard "${SLURM_ARRAY_TASK_ID}/${shards}"
