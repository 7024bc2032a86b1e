"""Modality dropout against hand-computed masks, rescaling and counts."""
import pytest
import torch

import dynamics
from dynamics.balance import ModalityDropout, modality_dropout
from tests.balance.common import TinyTwoView, batch


def _hand_masks(u1: torch.Tensor, u2: torch.Tensor, p: float, weights: list[float]) -> list[list[float]]:
    """The documented rule in plain Python: u1 < p drops a view, u2 in [c_{v-1}, c_v) picks view v."""
    cumulative = [sum(weights[:i + 1]) for i in range(len(weights))]
    masks = [[1.0] * len(u1) for _ in weights]
    for i, (a, b) in enumerate(zip(u1.tolist(), u2.tolist())):
        if a < p:
            view = next(v for v, c in enumerate(cumulative) if b < c or v == len(weights) - 1)
            masks[view][i] = 0.0
    return masks


@pytest.mark.parametrize("weights", [None, [0.2, 0.5, 0.3]])
def test_masks_and_rescaling_match_the_hand_rule(weights):
    views = ["a", "b", "c"]
    p = 0.6
    drop = ModalityDropout(views, p, weights=weights, generator=torch.Generator().manual_seed(7))
    reps = [torch.randn(500, 4), torch.randn(500, 2), torch.randn(500, 3)]
    out = drop(reps)
    g = torch.Generator().manual_seed(7)
    u1, u2 = torch.rand(500, generator=g), torch.rand(500, generator=g)
    w = weights or [1 / 3] * 3
    for v, mask in enumerate(_hand_masks(u1, u2, p, w)):
        mask = torch.tensor(mask).unsqueeze(1)
        torch.testing.assert_close(out[v], reps[v] * mask / (1 - p * w[v]), rtol=1e-6, atol=0)
        assert drop.last_present[views[v]].item() == mask.sum().item()
    kept = torch.stack([(o.abs().sum(1) > 0) for o in out])
    assert kept.any(0).all() and (kept.sum(0) >= 2).all()  # never more than one view dropped


def test_rates_follow_p_and_weights():
    drop = ModalityDropout(["a", "b"], 0.4, weights={"a": 3, "b": 1}, generator=torch.Generator().manual_seed(0))
    n = 200_000
    out = drop([torch.ones(n, 1), torch.ones(n, 1)])
    lost_a, lost_b = (out[0] == 0).float().mean().item(), (out[1] == 0).float().mean().item()
    assert lost_a == pytest.approx(0.4 * 0.75, abs=0.005) and lost_b == pytest.approx(0.4 * 0.25, abs=0.005)
    # inverted dropout: the mean of a kept-or-dropped constant stays 1
    assert out[0].mean().item() == pytest.approx(1.0, abs=0.01) and out[1].mean().item() == pytest.approx(1.0, abs=0.01)


def test_the_reproductions_two_view_masks_are_unchanged():
    """The fair two-view case draws what analyses/models.py drew before the move: rand < p, then rand < 0.5."""
    drop = ModalityDropout(["cc", "mlo"], 0.25)
    reps = [torch.randn(64, 8), torch.randn(64, 8)]
    torch.manual_seed(11)
    out = drop(reps)
    torch.manual_seed(11)
    dropped, first = torch.rand(64) < 0.25, torch.rand(64) < 0.5
    old = [(~(dropped & first)).float(), (~(dropped & ~first)).float()]
    scale = 1.0 / (1.0 - 0.25 / 2)
    for o, r, k in zip(out, reps, old):
        assert torch.equal(o, r * (k * scale).unsqueeze(1))


def test_eval_mode_and_p_zero_are_the_identity():
    drop = ModalityDropout(["a", "b"], 0.5)
    reps = [torch.randn(4, 2), torch.randn(4, 2)]
    drop.eval()
    assert drop(reps) is reps
    assert ModalityDropout(["a", "b"], 0.0)(reps) is reps
    state = torch.random.get_rng_state()
    drop({"a": reps[0], "b": reps[1]})
    assert torch.equal(state, torch.random.get_rng_state())  # nothing drawn


@pytest.mark.parametrize("bad, match", [
    (dict(views=["a"]), "two distinct"), (dict(p=1.5), "probability"), (dict(weights=[1, -1]), "non-negative"),
    (dict(weights={"a": 1, "z": 1}), "expected exactly the views"), (dict(p=1.0, weights=[1, 0]), "every sample"),
])
def test_bad_settings_are_named(bad, match):
    kwargs = dict(views=["a", "b"], p=0.5) | bad
    with pytest.raises(ValueError, match=match):
        ModalityDropout(kwargs.pop("views"), **kwargs)


def test_hook_on_a_fusion_module_of_unequal_widths_and_logged_counts(tmp_path):
    torch.manual_seed(0)
    model = TinyTwoView()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    model.head.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    rec = dynamics.attach(model, opt, views={"a": model.a, "b": model.b}, out=tmp_path / "r")
    handle = modality_dropout(model.head, {"a": 4, "b": 2}, p=0.5, generator=torch.Generator().manual_seed(3))
    g, expected = torch.Generator().manual_seed(1), []
    for step in range(4):
        xa, xb, y = batch(g)
        for micro in range(2):  # two micro-batches per step: the step's count is their mean
            loss = torch.nn.functional.cross_entropy(model(xa, xb), y)
            loss.backward()
            h = seen[-1]
            with torch.no_grad():
                ref = torch.cat([model.a(xa), model.b(xb)], 1)
            present = [(h[:, :4].abs().sum(1) > 0), (h[:, 4:].abs().sum(1) > 0)]
            torch.testing.assert_close(h[present[0], :4], ref[present[0], :4] / 0.75)
            torch.testing.assert_close(h[present[1], 4:], ref[present[1], 4:] / 0.75)
            assert torch.equal(h[~present[0], :4], torch.zeros_like(h[~present[0], :4]))
            expected.append([float(m.sum()) for m in present])
        opt.step()
        opt.zero_grad()
    model.eval()
    assert torch.equal(model(xa, xb), model.head(torch.cat([model.a(xa), model.b(xb)], 1)))  # eval: untouched
    handle.remove()
    rec.close()
    _, per_step = dynamics.load(tmp_path / "r")
    for step in range(4):
        a, b = expected[2 * step], expected[2 * step + 1]
        row = per_step.set_index("step").loc[step]
        assert row["present_a"] == (a[0] + b[0]) / 2 and row["present_b"] == (a[1] + b[1]) / 2


def test_probe_passes_inside_the_step_are_not_counted(tmp_path):
    """The recorder's probe runs the model inside optimizer.step(): its dropout masks are not the step's."""
    from analyses.models import mlp_model

    torch.manual_seed(0)
    model = mlp_model("dropout", {"a": 5, "b": 3}, hidden=8, p_drop=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    probe = dynamics.ProbeBatch(({"a": torch.randn(40, 5, generator=g), "b": torch.randn(40, 3, generator=g)},),
                                torch.randint(0, 2, (40,), generator=g).float(),
                                torch.nn.functional.binary_cross_entropy_with_logits)
    rec = dynamics.attach(model, opt, views={"a": model.a_column, "b": model.b_column}, out=tmp_path / "r",
                          probe=probe, probe_every=1)
    counts = []
    for _ in range(3):
        x = {"a": torch.randn(10, 5, generator=g), "b": torch.randn(10, 3, generator=g)}
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), torch.ones(10))
        loss.backward()
        counts.append(float(model.last_present["a"]))
        opt.step()
        opt.zero_grad()
    rec.close()
    _, per_step = dynamics.load(tmp_path / "r")
    assert per_step["probe_change"].notna().all()
    assert per_step["present_a"].tolist() == counts
