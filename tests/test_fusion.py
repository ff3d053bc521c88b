"""The plan's fusion records and early exits, decided once, tested directly."""

from __future__ import annotations

import numpy as np
from random_graphs import Builder

from ismkernel import config
from ismkernel.backends import get_backend
from ismkernel.ir import nodes as ops
from ismkernel.plan import build_plan
from ismkernel.plan.fusion import Epilogue, fuse


def _plan(b: Builder, outputs, lower=None):
    b.g.outputs = b.g.output_names = list(outputs)
    g = b.g.finalize()
    name = g.inputs[0]
    length = g.nodes[name].shape[0]
    args = (g, name, {name: (length, 4)}, np.arange(length))
    if lower is None:
        return build_plan(*args)
    return get_backend(lower).plan(*args, alternatives=np.eye(4))


def _residual_stack(n_blocks=2, filters=8, length=40):
    """conv -> relu, then blocks relu(conv(x)) + x, then a head."""
    b = Builder(length)
    x = b.add(ops.Activation("relu"), [b.conv(b.seq, filters, 5)])
    convs, adds = [], []
    for d in range(n_blocks):
        c = b.conv(x, filters, 3, dilation=2**d)
        r = b.add(ops.Activation("relu"), [c])
        x = b.add(ops.Merge("add"), [r, x])
        convs.append(c)
        adds.append(x)
    return b, x, convs, adds


def test_a_residual_block_is_one_epilogue():
    b, x, convs, adds = _residual_stack()
    head = b.conv(x, 8, 3)
    plan = _plan(b, [head])
    fuse(plan)
    first, second = (plan.nodes[c].epilogue for c in convs)
    relu1 = b.g.consumers()[convs[0]][0]
    assert first == Epilogue(
        relu=True,
        residual=b.g.nodes[adds[0]].inputs[1],
        emit_change=True,  # the next convolution reads the add's change
        keep_values=False,  # and only it and the next fused add read the add
        row_sums=False,
        result=adds[0],
        relu_node=relu1,
        add_node=adds[0],
    )
    assert second.result == adds[1] and second.residual == adds[0]
    assert plan.nodes[relu1].fused_into == convs[0]
    assert plan.nodes[adds[0]].fused_into == convs[0]
    # the head's output is a model output: nothing after it to fuse
    assert plan.nodes[head].epilogue == Epilogue(
        relu=False,
        residual=None,
        emit_change=False,
        keep_values=True,
        row_sums=False,
        result=head,
    )


def test_a_global_average_of_a_fused_result_gets_its_row_sums():
    b, x, convs, adds = _residual_stack()
    counts = b.add(ops.GlobalPool1D("average"), [x])
    profile = b.conv(x, 8, 3)
    plan = _plan(b, [profile, counts])
    fuse(plan)
    last = plan.nodes[convs[-1]].epilogue
    assert last.emit_change and last.row_sums and not last.keep_values


def test_a_tactic_without_the_full_epilogue_fuses_a_relu_only():
    b, x, convs, adds = _residual_stack()
    plan = _plan(b, [b.conv(x, 8, 3)])
    fuse(plan, full_epilogue=lambda p: False)
    for c in convs:
        ep = plan.nodes[c].epilogue
        assert ep.relu and ep.residual is None and not ep.emit_change
    assert all(not plan.nodes[a].fused_into for a in adds)


def test_a_relu_read_twice_or_an_output_is_not_fused():
    b = Builder(30)
    c = b.conv(b.conv(b.seq, 8, 5), 8, 3)
    r = b.add(ops.Activation("relu"), [c])
    c2 = b.conv(r, 8, 3)
    c3 = b.conv(r, 8, 3)
    plan = _plan(b, [b.add(ops.Merge("add"), [c2, c3])])
    fuse(plan)
    ep = plan.nodes[c].epilogue  # the conv's only reader is the ReLU
    assert ep.relu and ep.result == r and ep.residual is None
    # both readers of the ReLU are delta convolutions: they read its change
    assert ep.emit_change and not ep.keep_values
    assert plan.nodes[c2].epilogue.result == c2  # read by the add: not fused
    b = Builder(30)
    c = b.conv(b.seq, 8, 5)
    c2 = b.conv(c, 8, 3)
    r = b.add(ops.Activation("relu"), [c2])
    plan = _plan(b, [r, c2])  # the convolution is itself an output
    fuse(plan)
    assert not plan.nodes[c2].epilogue.relu


def test_early_exit_after_a_clamp_that_is_all_the_rest_reads():
    b = Builder(30)
    c = b.conv(b.seq, 8, 5)
    r = b.add(ops.Activation("relu"), [c])
    p = b.add(ops.Pool1D("max", 2, 2), [r])
    f = b.add(ops.Flatten(), [p])
    out = b.add(ops.Dense(2), [f], kernel=b.w(15 * 8, 2), bias=b.w(2))
    plan = _plan(b, [out])
    fuse(plan)
    assert [n for n, q in plan.nodes.items() if q.exit_check] == [r, p]


def test_the_cpu_lowering_picks_tactics_and_fuses():
    b, x, convs, adds = _residual_stack(n_blocks=4, length=60)
    profile = b.conv(x, 2, 7)
    plan = _plan(b, [profile], lower="cpu")
    assert plan.device == "cpu"
    widths = [plan.nodes[b.g.nodes[c].inputs[0]].width for c in convs]
    tactics = [plan.nodes[c].tactic for c in convs]
    assert tactics == [
        "per-tap" if w >= config.CPU_PER_TAP_MIN_ROWS else "col2im" for w in widths
    ]
    assert set(tactics) == {"col2im", "per-tap"}
    assert plan.nodes[profile].tactic == "few-channels"
    assert all(plan.nodes[c].epilogue.emit_change for c in convs[:-1])
    text = plan.describe()
    assert "Fused epilogues (cpu tactics):" in text
    assert f"{convs[0]} -> {adds[0]}: Epilogue(relu=True" in text
    assert f"in {convs[0]}" in text  # the fused ReLU and add show where they run
