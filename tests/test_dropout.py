"""Dropout where the course puts it: dropout.p is the probability of dropping, in train mode only."""

import pytest
import torch
from torch import nn

from regx.engine import Pipeline, evaluate
from tests.conftest import make_model, smoke_cfg


def test_dropout_p_is_the_probability_of_dropping_in_the_models_regx_builds():
    """dropout.p reaches the model as the drop probability (not the keep probability) of its layers."""
    torch.manual_seed(0)
    model = make_model("smallcnn", fc=[512], dropout=0.3).train()
    (drop,) = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    out = drop(torch.ones(200_000))
    assert (out == 0).float().mean().item() == pytest.approx(0.3, abs=0.005)
    assert torch.allclose(out[out != 0], torch.tensor(1 / 0.7))


@pytest.mark.parametrize("name", ["smallcnn", "resnet18", "mobilenet_v3_small"])
def test_dropout_sits_before_the_classifier_and_eval_is_deterministic(name):
    model = make_model(name, dropout=0.5)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    order = [m for m in model.modules() if isinstance(m, nn.Dropout | nn.Linear)]
    assert isinstance(order[order.index(linears[-1]) - 1], nn.Dropout)
    x = torch.rand(4, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_smallcnn_fc_dropout_before_every_linear_and_conv_dropout_after_blocks():
    model = make_model("smallcnn", num_classes=5, in_channels=3, fc=[64, 32], dropout=0.5, conv_dropout=0.1)
    mods = list(model.modules())
    linears = [i for i, m in enumerate(mods) if isinstance(m, nn.Linear)]
    assert not isinstance(mods[linears[0] - 1], nn.Dropout)  # the pooled conv features are not dropped
    for i in linears[1:]:  # every layer fed by a hidden fully connected layer is
        assert isinstance(mods[i - 1], nn.Dropout) and isinstance(mods[i - 2], nn.ReLU)
    assert sum(isinstance(m, nn.Dropout2d) for m in mods) == 3


def test_evaluation_runs_in_eval_mode():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(self.training)
            return x.mean(dim=(2, 3))

    model = Probe().train()
    pipe = Pipeline(torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1), False)
    batches = [(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))]
    evaluate(model, batches, pipeline=pipe, amp=torch.autocast("cpu", enabled=False))
    assert seen == [False]


def test_mc_dropout_reports_accuracy_and_entropy(tmp_path):
    from regx.train import train

    s = train(smoke_cfg("epochs=1", "dropout=fc", "dropout.mc_samples=4"), tmp_path / "r")
    assert 0 <= s["mc_test_acc"] <= 1
    assert 0 < s["mc_entropy"] <= torch.log(torch.tensor(10.0)).item() + 1e-6


def test_dropping_the_pooled_features_is_opt_in():
    model = make_model("smallcnn", num_classes=5, in_channels=3, fc=[64], dropout=0.5, dropout_features=True)
    mods = list(model.modules())
    assert all(isinstance(mods[i - 1], nn.Dropout) for i, m in enumerate(mods) if isinstance(m, nn.Linear))


@pytest.mark.parametrize(
    "name,own",
    [
        pytest.param("vgg11_bn", 2, marks=pytest.mark.slow),  # 5.5 s to build; efficientnet_b0 removes its own too
        ("efficientnet_b0", 1),
        ("mobilenet_v3_small", 1),
        ("resnet18", 0),
        ("convnext_tiny", 0),
    ],
)
def test_the_dropout_group_owns_torchvisions_dropout(name, own):
    """Under dropout=none no Dropout module is left (VGG's, EfficientNet's and MobileNet's own are removed);
    under dropout.p the classifier's own Dropout layers take that probability, one layer is added only
    where the classifier has none, and none is ever stacked on another."""
    import torchvision.models as tvm

    reference = tvm.get_model(name, weights=None, num_classes=5)
    assert sum(isinstance(m, nn.Dropout) for m in reference.modules()) >= own
    none = make_model(name, dropout=0.0)
    assert not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in none.modules())
    assert list(none.state_dict()) == list(reference.state_dict())  # weights load as before
    some = make_model(name, dropout=0.3)
    drops = [m for m in some.modules() if isinstance(m, nn.Dropout)]
    head = [m for m in some.modules() if isinstance(m, nn.Dropout | nn.Linear)]
    assert len(drops) == max(own, 1) and all(d.p == 0.3 for d in drops)
    assert not any(isinstance(a, nn.Dropout) and isinstance(b, nn.Dropout) for a, b in zip(head, head[1:]))


def test_mc_dropout_reaches_timms_functional_dropout():
    """timm's CNNs built with drop_rate call F.dropout in their head, keyed on the model's own training
    flag: MC dropout switches that on too (and leaves BatchNorm in eval mode)."""
    pytest.importorskip("timm")
    from regx.engine import mc_dropout

    model = make_model("resnet18", zoo="timm", num_classes=5, dropout=0.5).eval()
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())  # functional, not a module
    stats = [b.clone() for b in model.buffers()]
    x = torch.randint(0, 255, (8, 3, 32, 32), dtype=torch.uint8)
    pipe = Pipeline(torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1), False)
    amp = torch.autocast("cpu", enabled=False)
    y = torch.zeros(8, dtype=torch.long)
    _, one = mc_dropout(model, [(x, y)], pipeline=pipe, amp=amp, samples=1)
    torch.manual_seed(1)
    _, again = mc_dropout(model, [(x, y)], pipeline=pipe, amp=amp, samples=1)
    deterministic = evaluate(model, [(x, y)], pipeline=pipe, amp=amp, num_classes=5)
    assert one != again  # each pass drops other units
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers())) and not model.training
    assert deterministic.loss > 0
