"""The plug-in quantity UpdateAlignment (Δθ_{t−1}·Δθ_t per tensor) against the brute-force reference of the
harness, the cosine derived from it against one computed from the reference's own tensors, and the plug-in
mechanism around it: its table declared in meta.json, compacted, resumed and read back by ``load_table``."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import dynamics
from dynamics.analysis.derived import update_cosine
from dynamics.schema import quantity_table
from dynamics.record.quantity import Quantity
from dynamics.record.update_alignment import UpdateAlignment
from tests.harness import (DEVICES, Setup, clone, device_or_skip, fresh_model, make_batches,
                           record_beside_reference, train)

SETUPS = [
    Setup("sgd-momentum", lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)),
    Setup("adamw-accumulation-2", lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2), micro=2),
    Setup("grad-scaler-clip", lambda m: torch.optim.Adam(m.parameters(), lr=1e-2), loss_scale=2.0 ** 10,
          clip=0.05, poison={3: math.inf}),
]


def _record(tmp_path, setup: Setup, steps: int = 7, device: str = "cpu"):
    *_, reference = record_beside_reference(tmp_path / "run", setup, steps, device, flush_every=3,
                                            parts=[UpdateAlignment()])
    return reference, dynamics.load_table(tmp_path / "run", "update_alignment")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("setup", SETUPS, ids=lambda s: s.name)
def test_update_dot_matches_brute_force(tmp_path, setup, device):
    device_or_skip(device)
    reference, table = _record(tmp_path, setup, device=device)
    merged = reference.merge(table.astype({"param": str}), on=["step", "param"], suffixes=("_ref", ""))
    assert len(merged) == len(reference) == len(table)
    assert merged["update_dot_ref"].notna().sum() > len(merged) // 2  # most steps are aligned
    np.testing.assert_allclose(merged["update_dot"], merged["update_dot_ref"], rtol=2e-5, atol=1e-14,
                               equal_nan=True)
    if setup.poison:  # the skipped step and the one after it have no previous update to align with
        skipped = next(iter(setup.poison))
        assert merged.loc[merged["step"].isin([skipped, skipped + 1]), "update_dot"].isna().all()


def test_update_cosine_per_view_matches_the_concatenated_updates(tmp_path):
    """The derived per-view cosine equals the cosine of each view's concatenated Δθ, computed from clones of the
    reference model's parameters step by step (an independent route: no dot products of the recorder)."""
    setup = SETUPS[0]
    model, steps = fresh_model(), 6
    reference_model = clone(model)
    batches = make_batches(steps)
    train(model, setup, batches, recorder_factory=lambda m, opt, s: dynamics.attach(
        m, opt, views={"cc": m.cc, "mlo": m.mlo}, out=tmp_path / "run", parts=[UpdateAlignment()]))
    snapshots = []
    train(reference_model, setup, batches, after_step=lambda step, rec: snapshots.append(
        {n: p.detach().double().clone() for n, p in reference_model.named_parameters()}))
    before = {n: p.detach().double() for n, p in fresh_model().named_parameters()}
    thetas = [before, *snapshots]
    per_param, per_step = dynamics.load(tmp_path / "run", split_shared=False)
    got = update_cosine(dynamics.load_table(tmp_path / "run", "update_alignment"), per_param, per_step=per_step)
    for view, prefix in (("cc", "cc."), ("mlo", "mlo.")):
        for t in range(1, steps):
            def flat(i):
                return torch.cat([(thetas[i + 1][n] - thetas[i][n]).reshape(-1) for n in thetas[0]
                                  if n.startswith(prefix)])
            expected = float(torch.nn.functional.cosine_similarity(flat(t - 1), flat(t), dim=0))
            value = got.loc[(got["view"] == view) & (got["step"] == t), "update_cosine"]
            assert len(value) == 1
            assert value.iloc[0] == pytest.approx(expected, rel=1e-6)  # float32 dot products
    assert not (got["step"] == 0).any()  # no update before the first


def test_table_is_declared_compacted_and_resumed(tmp_path):
    """The store knows the plug-in's table only from meta.json: parts are verified, merged by compaction,
    and a resumed run appends to them."""
    setup = SETUPS[0]
    model = fresh_model()
    optimizer = setup.make_optimizer(model)
    batches = make_batches(8)

    def steps(recorder, chunk):
        for micro in chunk:
            x_cc, x_mlo, y = micro[0]
            ((model(x_cc, x_mlo) - y) ** 2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
        recorder.close()

    steps(dynamics.attach(model, optimizer, views={"cc": model.cc, "mlo": model.mlo}, out=tmp_path / "run",
                          flush_every=2, parts=[UpdateAlignment()]), batches[:5])
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["tables"]["update_alignment"]["columns"] == [["step", "int64"], ["param_id", "int32"],
                                                              ["update_dot", "double"]]
    assert len(list((tmp_path / "run" / "update_alignment").glob("*.parquet"))) == 1  # 3 flushes, compacted
    steps(dynamics.attach(model, optimizer, views={"cc": model.cc, "mlo": model.mlo}, out=tmp_path / "run",
                          flush_every=2, parts=[UpdateAlignment()], resume=True), batches[5:])
    table = dynamics.load_table(tmp_path / "run", "update_alignment")
    assert sorted(table["step"].unique()) == list(range(8))
    n = table["param"].nunique()
    # the first step of each attach has no previous update (the resumed recorder starts without one)
    assert table.groupby("step")["update_dot"].apply(lambda s: s.isna().all()).to_dict() == {
        s: s in (0, 5) for s in range(8)}
    assert len(table) == 8 * n


def test_a_damaged_plugin_part_is_refused(tmp_path):
    _record(tmp_path, SETUPS[0], steps=4)
    part = next((tmp_path / "run" / "update_alignment").glob("*.parquet"))
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(dynamics.RunStoreError, match="update_alignment.*damaged or replaced"):
        dynamics.load_table(tmp_path / "run", "update_alignment")


def test_bad_parts_are_refused_with_their_names(tmp_path):
    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    views = {"cc": model.cc, "mlo": model.mlo}
    with pytest.raises(TypeError, match="parts= takes a list"):
        dynamics.attach(model, optimizer, views, out=tmp_path / "a", parts=UpdateAlignment())
    with pytest.raises(TypeError, match=r"parts\[1\] must be a dynamics.Quantity, got str"):
        dynamics.attach(model, optimizer, views, out=tmp_path / "b", parts=[UpdateAlignment(), "grad_peak"])
    with pytest.raises(ValueError, match="declares table 'update_alignment', which UpdateAlignment writes"):
        dynamics.attach(model, optimizer, views, out=tmp_path / "c", parts=[UpdateAlignment(), UpdateAlignment()])

    for reserved in ("commits", "quarantine", "Bad-Name"):  # the run directory's own folders, a bad folder name
        with pytest.raises(ValueError, match=f"table name '{reserved}'"):
            quantity_table(reserved, "x")

    class Params(Quantity):
        tables = (quantity_table("params", "x"),)
    with pytest.raises(ValueError, match="declares table 'params', which the base measurements writes"):
        dynamics.attach(model, optimizer, views, out=tmp_path / "d", parts=[Params()])
    used = UpdateAlignment()
    open_recorder = dynamics.attach(model, optimizer, views, out=tmp_path / "e", parts=[used])
    other = fresh_model()
    with pytest.raises(ValueError, match="UpdateAlignment is attached to an open recorder"):
        dynamics.attach(other, torch.optim.SGD(other.parameters(), lr=0.1), {"cc": other.cc, "mlo": other.mlo},
                        out=tmp_path / "f", parts=[used])
    open_recorder.close()
    assert not any((tmp_path / n).exists() for n in "abcdf")  # a refused attach leaves no run behind
    dynamics.attach(other, torch.optim.SGD(other.parameters(), lr=0.1), {"cc": other.cc, "mlo": other.mlo},
                    out=tmp_path / "g", parts=[used]).close()  # closed, it may be attached again
    with pytest.raises(dynamics.RunStoreError, match="no per-tensor table 'grad_peak'"):
        dynamics.load_table(tmp_path / "e", "grad_peak")


def test_a_failing_plugin_never_reaches_the_training_loop(tmp_path):
    class Broken(Quantity):
        def on_step_end(self, step):
            raise RuntimeError("boom")

    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    recorder = dynamics.attach(model, optimizer, {"cc": model.cc, "mlo": model.mlo}, out=tmp_path / "run",
                               parts=[Broken()])
    x_cc, x_mlo, y = make_batches(1)[0][0]
    with pytest.warns(RuntimeWarning, match="boom"):
        ((model(x_cc, x_mlo) - y) ** 2).mean().backward()
        optimizer.step()
    recorder.close()
    assert any("boom" in e for e in dynamics.read_meta(tmp_path / "run")["errors"])
