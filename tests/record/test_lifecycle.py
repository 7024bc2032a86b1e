"""Hook life cycle: attach → train → close leaves model and optimizer exactly as if never attached."""
import pytest
import torch

import dynamics
from tests.harness import (SETUPS_FOR_LIFECYCLE, SharedColumn, assert_bit_identical, fresh_model, make_batches, state,
                     train)


def _hook_counts(model, optimizer):
    """Every hook dynamics could leave behind: on parameter tensors, the optimizer, and any module's forward."""
    tensor_hooks = sum(len(p._backward_hooks or {}) for p in model.parameters())
    return tensor_hooks, len(optimizer._optimizer_step_pre_hooks), len(optimizer._optimizer_step_post_hooks)


def _module_hooks(model):
    """{module name: (forward-pre hooks, forward hooks)} for the modules that have any."""
    counts = {name: (len(m._forward_pre_hooks), len(m._forward_hooks)) for name, m in model.named_modules()}
    return {name: c for name, c in counts.items() if c != (0, 0)}


def _trainable_tensors(model) -> int:
    return len({id(p) for p in model.parameters() if p.requires_grad})


def test_close_removes_every_hook_and_later_training_is_identical(tmp_path):
    setup = SETUPS_FOR_LIFECYCLE
    model, plain = fresh_model(), fresh_model()
    optimizer = setup.make_optimizer(model)
    rec = dynamics.attach(model, optimizer, views={"cc": model.cc, "mlo": model.mlo}, out=tmp_path / "r")
    # one gradient hook per trainable tensor, one optimizer pre-step and one post-step hook, no module hooks
    assert _hook_counts(model, optimizer) == (_trainable_tensors(model), 1, 1)
    assert _module_hooks(model) == {}
    rec.close()
    rec.close()  # idempotent
    assert _hook_counts(model, optimizer) == (0, 0, 0) and _module_hooks(model) == {}
    batches = make_batches(4)
    train(model, setup, batches)
    train(plain, setup, batches)
    assert_bit_identical(state(model), state(plain))


def test_close_removes_the_attribution_hooks(tmp_path):
    torch.manual_seed(0)
    model = SharedColumn()
    plain = SharedColumn()
    plain.load_state_dict(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = dynamics.attach(model, optimizer, views=["cc", "mlo"], attribute={model.column: ["cc", "mlo"]},
                          out=tmp_path / "r")
    assert _hook_counts(model, optimizer) == (_trainable_tensors(model), 1, 1)
    # the model's forward-pre hook (a new pass), the attributed module's forward-pre and forward hooks, and on
    # the children of an attributed nn.Sequential a forward-pre hook (checkpoint_sequential calls them directly)
    children = {f"column.{i}": (1, 0) for i in range(len(model.column))}
    assert _module_hooks(model) == {"": (1, 0), "column": (1, 1), **children}
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g), torch.randn(8, generator=g))
            for _ in range(3)]

    def step(net, opt, batch):
        a, b, y = batch
        ((net(a, b) - y) ** 2).mean().backward()
        opt.step()
        opt.zero_grad()
    step(model, optimizer, data[0])
    rec.close()
    assert _hook_counts(model, optimizer) == (0, 0, 0) and _module_hooks(model) == {}
    assert all(type(p) is torch.nn.Parameter for p in model.column.parameters())  # no alias left in place
    for batch in data[1:]:  # training on after close is as if never attached
        step(model, optimizer, batch)
    plain_optimizer = torch.optim.SGD(plain.parameters(), lr=0.1)
    for batch in data:
        step(plain, plain_optimizer, batch)
    assert_bit_identical(state(model), state(plain))


def test_context_manager_closes_and_flushes_when_training_raises(tmp_path):
    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(KeyError):
        with dynamics.attach(model, optimizer, views={"cc": model.cc}, out=tmp_path / "r", flush_every=50):
            for step, [(x_cc, x_mlo, y)] in enumerate(make_batches(3)):
                ((model(x_cc, x_mlo) - y) ** 2).mean().backward()
                optimizer.step()
                optimizer.zero_grad()
            raise KeyError("boom")
    assert _hook_counts(model, optimizer) == (0, 0, 0)
    per_param, per_step = dynamics.load(tmp_path / "r")
    assert per_step["step"].tolist() == [0, 1, 2]
    meta = dynamics.read_meta(tmp_path / "r")
    assert meta["status"] == "closed" and "KeyError" in meta["errors"][0]


def test_log_after_close_is_an_error(tmp_path):
    model = fresh_model()
    rec = dynamics.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), views={"cc": model.cc},
                          out=tmp_path / "r")
    rec.close()
    with pytest.raises(RuntimeError, match="closed"):
        rec.log(loss=1.0)


def test_log_rejects_bad_scalars(tmp_path):
    model = fresh_model()
    with dynamics.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), views={"cc": model.cc},
                         out=tmp_path / "r") as rec:
        with pytest.raises(ValueError, match="'step' is reserved"):
            rec.log(step=1.0)
        with pytest.raises(ValueError, match="'x' has 3 elements"):
            rec.log(x=torch.ones(3))
        with pytest.raises(ValueError, match="'y' must be a number"):
            rec.log(y="high")


def test_logged_scalars_average_micro_batches_and_land_on_their_step(tmp_path):
    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with dynamics.attach(model, optimizer, views={"cc": model.cc}, out=tmp_path / "r", every=2,
                         flush_every=1) as rec:
        for step, micro in enumerate(make_batches(4, micro=2)):
            for i, (x_cc, x_mlo, y) in enumerate(micro):
                ((model(x_cc, x_mlo) - y) ** 2).mean().backward()
                rec.log(during=torch.tensor(10.0 * step + i))   # before the step: this step
            optimizer.step()
            optimizer.zero_grad()
            rec.log(after=float(step))                          # after the step: the step just taken
    _, per_step = dynamics.load(tmp_path / "r")
    per_step = per_step.set_index("step")
    assert per_step["during"].tolist() == [0.5, 10.5, 20.5, 30.5]
    assert per_step["after"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert per_step["recorded"].tolist() == [True, False, True, False]


def test_a_steps_scalar_is_the_mean_of_all_its_values_across_flushes(tmp_path, monkeypatch):
    """Values of one scalar logged before and after the step's flush, and past a forced flush (log() holds
    at most MAX_PENDING values), still give one row per step with the mean of every value."""
    from dynamics.record import logs
    monkeypatch.setattr(logs, "MAX_PENDING", 3)
    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    logged = {}
    with dynamics.attach(model, optimizer, views={"cc": model.cc}, out=tmp_path / "r", flush_every=1) as rec:
        for step, micro in enumerate(make_batches(3, micro=4)):
            values = logged.setdefault(step, [])
            for i, (x_cc, x_mlo, y) in enumerate(micro):
                ((model(x_cc, x_mlo) - y) ** 2).mean().backward()
                for value in (0.1 * step + i, 7.0 * i - step):   # 8 values: past MAX_PENDING twice
                    rec.log(both=torch.tensor(value, dtype=torch.float64))
                    values.append(value)
            optimizer.step()
            optimizer.zero_grad()
            rec.log(both=100.0 + step)                            # after the step's own flush
            values.append(100.0 + step)
    _, per_step = dynamics.load(tmp_path / "r")
    assert per_step["step"].tolist() == [0, 1, 2]
    assert per_step["both"].tolist() == pytest.approx([sum(v) / len(v) for v in logged.values()], rel=1e-15)
