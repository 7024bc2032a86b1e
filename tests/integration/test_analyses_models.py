"""Models: shapes, the ResNet-22 layout, weight sharing, and modality dropout."""
import pytest
import torch
from torch import nn

from analyses.models import ResNet22Column, mlp_model, nyu_model


def _inputs(n=4, size=64):
    return {"cc": torch.randn(n, 1, size, size), "mlo": torch.randn(n, 1, size, size)}


@pytest.mark.parametrize("condition", ["separate", "shared", "dropout"])
def test_output_shape(condition):
    m = nyu_model(condition, width=0.25)
    assert m(_inputs()).shape == (4,)


def test_resnet22_layout_and_widths():
    col = ResNet22Column()
    convs = [m for m in col.modules() if isinstance(m, nn.Conv2d)]
    main = [c for c in convs if c.kernel_size != (1, 1)]
    assert len(main) == 21 and main[0].kernel_size == (7, 7) and main[0].stride == (2, 2) and main[0].out_channels == 16
    assert [c.out_channels for c in main[1::4]] == [16, 32, 64, 128, 256]  # first conv of each stage
    assert [c.stride[0] for c in main[1::4]] == [1, 2, 2, 2, 2]
    assert len(convs) - len(main) == 4  # 1x1 projection shortcuts where the shape changes
    assert col(torch.randn(2, 1, 64, 64)).shape == (2, 256)
    assert ResNet22Column(width=0.5)(torch.randn(2, 1, 64, 64)).shape == (2, 128)


def test_shared_has_one_column_called_cc_then_mlo():
    m = nyu_model("shared", width=0.25)
    assert not hasattr(m, "cc_column") and not hasattr(m, "mlo_column")
    sep = nyu_model("separate", width=0.25)
    n_col = sum(p.numel() for p in m.column.parameters())
    assert sum(p.numel() for p in sep.parameters()) - sum(p.numel() for p in m.parameters()) == n_col
    seen = []
    m.column.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    x = _inputs()
    m.eval()
    m(x)
    assert len(seen) == 2 and torch.equal(seen[0], x["cc"]) and torch.equal(seen[1], x["mlo"])
    # a loss on the CC half alone reaches the one shared set of weights
    m.zero_grad()
    m.represent("cc", x["cc"]).sum().backward()
    assert m.column.conv1.weight.grad.abs().sum() > 0


def test_mlp_shared_shares_body_not_stems():
    m = mlp_model("shared", {"fou": 76, "mor": 6}, hidden=16)
    assert m.fou_stem.in_features == 76 and m.mor_stem.in_features == 6
    assert m({"fou": torch.randn(3, 76), "mor": torch.randn(3, 6)}).shape == (3,)
    s = mlp_model("separate", {"fou": 76, "mor": 6}, hidden=16)
    assert s.fou_column.stem.in_features == 76


def test_dropout_model_counts_present_views_and_rescales():
    torch.manual_seed(1)
    m = mlp_model("dropout", {"a": 5, "b": 5}, hidden=8, p_drop=0.5)
    m.train()
    x = {"a": torch.randn(2000, 5), "b": torch.randn(2000, 5)}
    reps = {}
    m.head.register_forward_hook(lambda mod, args, out: reps.update(h=args[0]))
    m(x)
    h = reps["h"]
    present_a = (h[:, :8].abs().sum(1) > 0)
    present_b = (h[:, 8:].abs().sum(1) > 0)
    assert torch.all(present_a | present_b)
    assert m.last_present["a"].item() == present_a.sum().item()
    assert m.last_present["b"].item() == present_b.sum().item()
    assert isinstance(m.last_present["a"], torch.Tensor)
    # kept representations are scaled by 1 / (1 - p/2) relative to the eval-mode representation
    ref = m.represent("a", x["a"])
    keep = present_a.nonzero()[:5, 0]
    torch.testing.assert_close(h[keep, :8], ref[keep] / (1 - 0.25))
    m.eval()
    m(x)
    assert m.last_present["a"].item() == 2000 and m.last_present["b"].item() == 2000


def test_input_noise_only_in_training():
    torch.manual_seed(0)
    m = nyu_model("separate", width=0.25, input_noise=0.5)
    seen = {}
    for v in ("cc", "mlo"):
        getattr(m, f"{v}_column").register_forward_pre_hook(lambda mod, args, v=v: seen.update({v: args[0]}))
    x = _inputs(2)
    m.train()  # BatchNorm uses batch statistics: without noise two forwards would be equal
    first = m(x)
    noise = {v: seen[v] - x[v] for v in ("cc", "mlo")}
    assert not torch.equal(first, m(x))
    for v in ("cc", "mlo"):  # each view's column sees its image plus N(0, 0.5²) noise (8192 pixels per view)
        assert noise[v].mean().item() == pytest.approx(0.0, abs=0.03)
        assert noise[v].std().item() == pytest.approx(0.5, abs=0.03)
    assert not torch.equal(noise["cc"], noise["mlo"])
    m.eval()
    assert torch.equal(m(x), m(x))
    assert torch.equal(seen["cc"], x["cc"]) and torch.equal(seen["mlo"], x["mlo"])
