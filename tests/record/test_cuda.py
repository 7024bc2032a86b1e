"""CUDA: no host synchronisation inside any recorder hook, under the set-ups that tempt one: a GradScaler with
fp16 autocast, clipping and accumulation; bf16 autocast with per-call attribution and the probe. The numbers
themselves are checked on CUDA against the brute-force reference in test_recorder_reference.py."""
import math

import pytest
import torch

import dynamics
from tests.cuda_strict import make_hooks_strict
from tests.harness import SharedColumn, fresh_model, make_batches

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _errors(run) -> list:
    return dynamics.read_meta(run).get("errors", [])


def test_strict_hooks_catch_a_synchronisation(tmp_path, monkeypatch):
    """The check can fail: a schedule that reads a device value to the host (the recorder calls it inside its
    hooks) is reported."""
    make_hooks_strict(monkeypatch.setattr)
    flag = torch.ones(1, device="cuda")
    model = fresh_model().cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with dynamics.attach(model, optimizer, views={"cc": model.cc, "mlo": model.mlo}, out=tmp_path / "r",
                         every=lambda step: bool(flag.item())):
        (x_cc, x_mlo, y), = make_batches(1)[0]
        with pytest.warns(RuntimeWarning, match="recording stopped"):
            model(x_cc.cuda(), x_mlo.cuda()).sum().backward()
            optimizer.step()
    assert any("synchroniz" in e for e in _errors(tmp_path / "r"))


@pytest.mark.parametrize("closure", [False, True], ids=["plain", "closure"])
def test_plain_loop_adamw_accumulation_clip_log(tmp_path, monkeypatch, closure):
    make_hooks_strict(monkeypatch.setattr)
    model = fresh_model().cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batches = [[tuple(t.cuda() for t in b) for b in micro] for micro in make_batches(6, 2)]
    rec = dynamics.attach(model, optimizer, views={"cc": model.cc, "mlo": model.mlo}, out=tmp_path / "r",
                          flush_every=100)
    for micro in batches:
        def accumulate():
            for x_cc, x_mlo, y in micro:
                loss = ((model(x_cc, x_mlo) - y) ** 2).mean()
                loss.backward()
                rec.log(loss=loss)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1, foreach=True)
            return loss
        if closure:  # optimizer.step(closure): measured after the closure, inside step()
            optimizer.step(accumulate)
        else:
            accumulate()
            optimizer.step()
        optimizer.zero_grad()
    rec.close()
    assert _errors(tmp_path / "r") == []
    per_param, per_step = dynamics.load(tmp_path / "r")
    assert len(per_step) == 6 and per_param["finite"].all() and per_step["loss"].notna().all()
    assert per_step["clip_factor"].notna().all()


def test_grad_scaler_fp16_clip_accumulation(tmp_path, monkeypatch):
    make_hooks_strict(monkeypatch.setattr)
    model = fresh_model().cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 12)
    rec = dynamics.attach(model, optimizer, views={"cc": model.cc, "mlo": model.mlo}, out=tmp_path / "r",
                          scaler=scaler)
    for step, micro in enumerate(make_batches(6, 2)):
        for x_cc, x_mlo, y in micro:
            with torch.autocast("cuda", dtype=torch.float16):
                out = model(x_cc.cuda(), x_mlo.cuda())
            loss = ((out.float() - y.cuda()) ** 2).mean() / 2 * (math.inf if step == 3 else 1.0)
            scaler.scale(loss).backward()
            rec.log(loss=loss)
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05, foreach=True)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    rec.close()
    assert _errors(tmp_path / "r") == []
    per_param, per_step = dynamics.load(tmp_path / "r")
    assert per_step["skipped"].tolist() == [False, False, False, True, False, False]
    assert per_param.loc[per_param["step"] != 3, "lca"].notna().all()


@pytest.mark.parametrize("use_probe", [False, True])
def test_bf16_autocast_attribution_and_probe(tmp_path, monkeypatch, use_probe):
    make_hooks_strict(monkeypatch.setattr)
    torch.manual_seed(0)
    model = SharedColumn().cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    probe = dynamics.ProbeBatch((torch.randn(8, 4, generator=g).cuda(), torch.randn(8, 4, generator=g).cuda()),
                                torch.randn(8, generator=g).cuda(), lambda out, y: ((out.float() - y) ** 2).mean())
    rec = dynamics.attach(model, optimizer, views=["cc", "mlo"], attribute={model.column: ["cc", "mlo"]},
                          out=tmp_path / "r", probe=probe if use_probe else None, probe_every=2)
    for _ in range(6):
        a, b, y = (torch.randn(8, 4, generator=g).cuda(), torch.randn(8, 4, generator=g).cuda(),
                   torch.randn(8, generator=g).cuda())
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(a, b)
        ((out.float() - y) ** 2).mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1, foreach=True)
        optimizer.step()
        optimizer.zero_grad()
    rec.close()
    assert _errors(tmp_path / "r") == []
    per_param, per_step = dynamics.load(tmp_path / "r")
    assert per_param["attributed"].any() and len(per_step) == 6
    assert not dynamics.read_meta(tmp_path / "r")["notes"]
    if use_probe:
        assert per_step["probe_change"].notna().sum() == 3
