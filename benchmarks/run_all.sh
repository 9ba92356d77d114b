#!/usr/bin/env bash
# Every figure of the README's result tables, one run after another (runs in
# parallel would share the 2 cores and distort the times). About 1.5 h on a
# 2-core CPU. CSVs go to benchmarks/results/, the markdown tables to stdout;
# ML100K_MODELS="..." narrows the models of the first ml-100k comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
# the default run's schedule with LoRA in every block, as the tables were measured
DEFAULT="properties/quick_start_config/default_run.yaml benchmarks/configs/all_blocks.yaml"
SYNTH=benchmarks/configs/synthetic_tiny_clip.yaml
[ -d dataset/synthetic ] || python dataset/make_synthetic.py --out dataset/synthetic --items 1000 --users 800
# ml-100k (text, pretrained MiniLM): the foundation issue's comparison
python benchmarks/compare_models.py --dataset ml-100k --config_files $DEFAULT \
    --models ${ML100K_MODELS:-SASRec FrozenMM GlobalPEFT PerPEFT}
# synthetic (images + titles, RANDOM tiny CLIP): the images issue's comparison
python benchmarks/compare_models.py --dataset synthetic --config_files $SYNTH \
    --models SASRec FrozenMM GlobalPEFT PerPEFT
python benchmarks/compare_models.py --dataset synthetic --config_files $SYNTH \
    --models PerPEFT --set grouping=random --tag random-groups
# GlobalPEFT trained as long as PerPEFT's two stages together
python benchmarks/compare_models.py --dataset synthetic --config_files $SYNTH \
    --models GlobalPEFT --set epochs=20 --tag same-epochs
python benchmarks/compare_models.py --dataset ml-100k --config_files $DEFAULT \
    --models GlobalPEFT --set epochs=6 --tag same-epochs
# PEFT kinds (LoRA is the runs above)
for kind in ia3 iisan; do
    python benchmarks/compare_models.py --dataset synthetic --config_files $SYNTH \
        --models PerPEFT --seeds 1 --set peft_type=$kind --tag $kind
    python benchmarks/compare_models.py --dataset ml-100k --config_files $DEFAULT \
        --models PerPEFT --seeds 1 --set peft_type=$kind --tag $kind
done
# the README's tables
python benchmarks/summarise.py benchmarks/results/compare_ml-100k*.csv
python benchmarks/summarise.py benchmarks/results/compare_synthetic*.csv
