"""cuda_strict.make_hooks_strict covers every hook dynamics runs in the training loop, attribution's included.

Checked without a GPU: CUDA's sync-debug switch is replaced by a stand-in that remembers the mode, and a
profiler notes the mode in force whenever a function of the dynamics package starts. test_cuda.py relies on
this coverage to catch a host synchronisation anywhere in dynamics.
"""
import sys
from pathlib import Path

import pytest
import torch

import dynamics
from tests.cuda_strict import make_hooks_strict
from tests.harness import SharedColumn

PACKAGE = str(Path(dynamics.__file__).parent)
# the per-parameter gradient hook only checks two host flags and calls a guarded function; the wrapped closure
# of optimizer.step(closure) runs the user's closure (user code, which may synchronise) and then a guarded one
DISPATCH_ONLY = {"hook", "wrapped"}


@pytest.mark.parametrize("closure", [False, True], ids=["plain", "closure"])
def test_every_dynamics_function_in_the_loop_runs_in_error_mode(tmp_path, monkeypatch, closure):
    mode = ["default"]
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: mode[0])
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda m: mode.__setitem__(0, m))
    make_hooks_strict(monkeypatch.setattr)
    torch.manual_seed(0)
    model = SharedColumn()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    probe = dynamics.ProbeBatch((torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)),
                                torch.randn(8, generator=g), lambda out, y: ((out - y) ** 2).mean())
    rec = dynamics.attach(model, optimizer, views=["cc", "mlo"], attribute={model.column: ["cc", "mlo"]},
                          out=tmp_path / "r", probe=probe, probe_every=2)
    seen: dict[str, set] = {"error": set(), "other": set()}

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(PACKAGE):
            seen["error" if mode[0] == "error" else "other"].add(frame.f_code.co_name)
    sys.setprofile(profile)
    try:
        for _ in range(4):
            batches = [(torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g), torch.randn(8, generator=g))
                       for _ in range(2)]

            def accumulate():
                for a, b, y in batches:
                    loss = ((model(a, b) - y) ** 2).mean() / 2
                    loss.backward()
                    rec.log(loss=loss)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
                return loss
            if closure:
                optimizer.step(accumulate)
            else:
                accumulate()
                optimizer.step()
            optimizer.zero_grad()
    finally:
        sys.setprofile(None)
    rec.close()
    assert mode[0] == "default"  # every switch was undone
    assert not dynamics.read_meta(tmp_path / "r").get("errors")
    assert seen["other"] <= DISPATCH_ONLY, f"dynamics code run outside the strict mode: {seen['other']}"
    # the recorder's hooks, its queued autograd callbacks, the attribution's module and tensor hooks, the probe
    assert {"log", "_pre_step", "_post_step", "_first_grad", "_queue_end", "_backward_ended", "_on_forward",
            "pre", "post", "_add", "loss_and_grads"} | ({"_closure_returned"} if closure else set()) <= seen["error"]
    assert ("wrapped" in seen["other"]) == closure
