"""Re-balancing against a run whose learning speeds are known by construction.

The loss is Σ_v (c_v(t)/2)·‖θ_v‖² (plus 0 × the model's output, so the fusion module runs): the gradient of
branch v is c_v(t)·θ_v, so its learning speed is exactly c_v(t)². SGD with lr 0 keeps θ fixed. The expected
schedule is simulated in plain Python from the documented rule.
"""
import math
import random

import numpy as np
import pytest
import torch

import dynamics
from dynamics.balance import decide, rebalance
from tests.balance.common import TinyTwoView, batch

C_A = [1.0] * 3 + [4.0] * 27
C_B = [3.0] * 3 + [0.1] * 27   # b learns fastest first, a overtakes it soon


def _expected(c_a, c_b, *, threshold, every, steps, warmup, clip=None):
    """(re-balanced view per step, {read step: (S_a, S_b)}) by the documented rule."""
    s, current, left, views, reads = [0.0, 0.0], None, 0, [], {}
    for t in range(len(c_a)):
        views.append(current)
        if current is None:
            rates = [c_a[t] ** 2, c_b[t] ** 2] if clip is None else clip[t]
            s = [s[0] + rates[0], s[1] + rates[1]]
        decision = None
        if t >= warmup and (t - warmup) % every == 0 and current is None:
            reads[t] = tuple(s)
            d = math.log10(max(s) / min(s))
            decision = (["a", "b"][s.index(min(s))],) if d > threshold else None
        if current is not None:
            left -= 1
            if left <= 0:
                current = None
        if decision is not None:
            current, left = decision[0], steps
    return views, reads


def _train(model, opt, c_a, c_b, g, *, micro=1, clip=None, seen=None):
    clip_rates = []
    for t in range(len(c_a)):
        for _ in range(micro):
            xa, xb, _ = batch(g)
            out = model(xa, xb)
            loss = 0 * out.sum() + sum(c / 2 * sum((p ** 2).sum() for p in branch.parameters())
                                       for c, branch in ((c_a[t], model.a), (c_b[t], model.b)))
            (loss / micro).backward()
            if seen is not None:
                with torch.no_grad():
                    seen.append((torch.cat([model.a(xa), model.b(xb)], 1), t))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            with torch.no_grad():
                clip_rates.append([float(sum((p.grad.double() ** 2).sum() for p in b.parameters()) /
                                         sum((p.double() ** 2).sum() for p in b.parameters())) for b in (model.a, model.b)])
        opt.step()
        opt.zero_grad()
    return clip_rates


def test_decide_by_hand():
    assert decide([1.0, 10.0], 0.5) == (0, 1.0)
    assert decide([4.0, 1.0], 0.5) == (1, math.log10(4.0))
    view, d = decide([1.0, 1.5], 0.5)
    assert view is None and d == pytest.approx(math.log10(1.5))
    assert decide([0.0, 1.0], 0.01)[0] is None and decide([2.0, 1.0, 8.0], 0.1)[0] == 1


@pytest.mark.parametrize("micro, every, steps, warmup, balanced", [(1, 1, 5, 0, {"a", "b"}), (2, 3, 4, 2, {"a", "b"}),
                                                                   (1, 2, 1, 7, {"b"})])
def test_schedule_speeds_and_swapped_inputs(tmp_path, micro, every, steps, warmup, balanced):
    torch.manual_seed(0)
    model = TinyTwoView()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    rec = dynamics.attach(model, opt, views={"a": model.a, "b": model.b}, out=tmp_path / "r")
    fused = []
    model.head.register_forward_hook(lambda m, args, out: fused.append(args[0].detach().clone()))
    handle = rebalance(model.head, opt, {"a": model.a, "b": model.b}, widths=[4, 2], threshold=0.3, every=every,
                       steps=steps, warmup=warmup)
    seen = []
    _train(model, opt, C_A, C_B, torch.Generator().manual_seed(1), micro=micro, seen=seen)
    handle.remove()
    rec.close()
    views, reads = _expected(C_A, C_B, threshold=0.3, every=every, steps=steps, warmup=warmup)
    assert set(v for v in views if v) == balanced  # the construction re-balances these views at some point
    assert handle.schedule == [(t, v) for t, v in enumerate(views) if v is not None]
    assert handle.reads == len(reads)
    _, per_step = dynamics.load(tmp_path / "r")
    per_step = per_step.set_index("step")
    for view in ("a", "b"):
        assert per_step[f"rebalanced_{view}"].tolist() == [float(v == view) for v in views]
    read = per_step[["rebalance_speed_a", "rebalance_speed_b"]].dropna()
    assert list(read.index) == sorted(reads)
    for t, (s_a, s_b) in reads.items():
        assert read.loc[t].tolist() == pytest.approx([s_a, s_b], rel=1e-5)
    # the fusion input: the re-balanced view's own representation, the other's running mean over all passes
    means = None
    for k, ((true, t), got) in enumerate(zip(seen, fused)):
        batch_means = true.double().mean(0)
        means = batch_means if means is None else (means * k + batch_means) / (k + 1)
        widths = {"a": slice(0, 4), "b": slice(4, 6)}
        if views[t] is None:
            assert torch.equal(got, true)
            continue
        keep, other = widths[views[t]], widths["b" if views[t] == "a" else "a"]
        assert torch.equal(got[:, keep], true[:, keep])
        torch.testing.assert_close(got[:, other].double(), means[other].expand(len(got), -1), rtol=1e-5, atol=1e-6)


def test_speeds_use_the_clipped_gradient(tmp_path):
    torch.manual_seed(0)
    model = TinyTwoView()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    handle = rebalance(model.head, opt, {"a": model.a, "b": model.b}, threshold=10.0, every=4)
    rates = _train(model, opt, C_A[:12], C_B[:12], torch.Generator().manual_seed(1), clip=0.05)
    handle.remove()
    _, reads = _expected(C_A[:12], C_B[:12], threshold=10.0, every=4, steps=5, warmup=0, clip=rates)
    assert handle.schedule == [] and handle.reads == 3
    torch.testing.assert_close(handle._speeds, torch.tensor(reads[8], dtype=torch.float64) +
                               torch.tensor(rates[9:12], dtype=torch.float64).sum(0), rtol=1e-6, atol=0)


def test_random_control_draws_uniformly_and_reads_nothing(tmp_path):
    torch.manual_seed(0)
    model = TinyTwoView()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    handle = rebalance(model.head, opt, {"a": model.a, "b": model.b}, mode="random", every=3, steps=2, seed=5)
    _train(model, opt, C_A, C_B, torch.Generator().manual_seed(1))
    handle.remove()
    rng, current, left, expected = random.Random(5), None, 0, []
    for t in range(len(C_A)):  # every 3rd step draws none / a / b; a drawn view holds for 2 steps
        expected.append(current)
        decision = (["a", "b", None][rng.randrange(3)],) if t % 3 == 0 else None
        if current is not None:
            left -= 1
            current = None if left <= 0 else current
        if decision is not None:
            current, left = decision[0], 2 if decision[0] is not None else 0
    assert handle.schedule == [(t, v) for t, v in enumerate(expected) if v is not None]
    assert handle.reads == 0 and len(handle.schedule) > 0


def test_bad_settings_are_named():
    model = TinyTwoView()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="both 'a' and 'b'"):
        rebalance(model.head, opt, {"a": model.a, "b": model.a})
    with pytest.raises(ValueError, match="mode"):
        rebalance(model.head, opt, {"a": model.a, "b": model.b}, mode="greedy")
    with pytest.raises(ValueError, match="every"):
        rebalance(model.head, opt, {"a": model.a, "b": model.b}, every=0)
    odd = TinyTwoView(width_b=3)  # fusion input 4 + 3: with parameter lists nothing tells the widths
    with rebalance(odd.head, opt, {"a": list(odd.a.parameters()), "b": list(odd.b.parameters())}):
        with pytest.raises(ValueError, match="does not split equally"):
            odd(torch.randn(2, 5), torch.randn(2, 3))
    with rebalance(odd.head, opt, {"a": odd.a, "b": odd.b}):  # branch modules: widths read from their outputs
        odd(torch.randn(2, 5), torch.randn(2, 3))


def test_dose_matched_control_opens_exactly_the_given_windows(tmp_path):
    """windows=k, horizon=T: k windows of `steps` steps, none overlapping or touching, all inside [warmup, T),
    each for a drawn view; the guided handle counts its own windows the same way."""
    torch.manual_seed(0)
    model = TinyTwoView()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    handle = rebalance(model.head, opt, {"a": model.a, "b": model.b}, mode="random", steps=3, warmup=4,
                       windows=5, horizon=len(C_A) - 3, seed=2)  # every window ends before training does
    _train(model, opt, C_A, C_B, torch.Generator().manual_seed(1))
    handle.remove()
    steps = [t for t, _ in handle.schedule]
    # windows: maximal runs of consecutive re-balanced steps (touching windows would merge: they must not)
    runs = [[steps[0]]]
    for t in steps[1:]:
        (runs[-1].append(t) if t == runs[-1][-1] + 1 else runs.append([t]))
    assert handle.windows == 5 and len(runs) == 5 and all(len(r) == 3 for r in runs)
    assert steps[0] >= 5 and steps[-1] < len(C_A)  # the first decision at warmup acts from the next step
    assert handle.reads == 0
    guided = rebalance(model.head, opt, {"a": model.a, "b": model.b}, threshold=0.0, steps=5)
    _train(model, opt, C_A, C_B, torch.Generator().manual_seed(1))
    guided.remove()
    g_steps = [t for t, _ in guided.schedule]
    assert guided.windows == sum(1 for i, t in enumerate(g_steps) if i == 0 or t != g_steps[i - 1] + 1)


def test_matched_starts_are_uniform_over_placements_and_refuse_what_cannot_fit():
    """Two windows of 2 steps, decisions in [0, 7): s1 < s2 with s2 - s1 >= 3 (the guided mode's spacing), each
    of the 10 placements drawn about a tenth of the time; 92 windows of 5 fit in [19, 570) as a guided run's
    did (its last window cut at the horizon), 93 do not."""
    from collections import Counter
    from dynamics.balance.rebalance import matched_starts
    rng = random.Random(0)
    counts = Counter(tuple(sorted(matched_starts(2, 0, 7, 2, rng))) for _ in range(5000))
    assert set(counts) == {(a, b) for a in range(7) for b in range(7) if b - a >= 3}
    assert len(counts) == 10 and all(abs(c / 5000 - 0.1) < 0.025 for c in counts.values())
    starts = sorted(matched_starts(92, 19, 570, 5, rng))
    assert len(starts) == 92 and min(np.diff(starts)) >= 6 and starts[0] >= 19 and starts[-1] < 570
    with pytest.raises(ValueError, match="do not fit"):
        matched_starts(93, 19, 570, 5, rng)
    model = TinyTwoView()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="windows and horizon go together"):
        rebalance(model.head, opt, {"a": model.a, "b": model.b}, windows=3, horizon=10)  # guided mode
