"""The operators registered with torch.library (``torch.ops.dcn_lessons.*``) are real PyTorch operators.

* ``torch.library.opcheck`` on every operator, every dtype and every backend that runs here: the schema (no
  hidden mutation or aliasing), the fake implementation against the real one (shapes, dtypes, strides), the
  autograd registration, and AOT dispatch with dynamic shapes;
* ``torch.compile(fullgraph=True)`` of a network with ``ModulatedDeformConv2dPack`` and ``DeformRoIPoolPack``:
  forward and backward with no graph break, equal to eager;
* ``torch.export``: the exported graph holds our operators as single nodes and runs to eager's numbers;
* the ``autograd.Function`` form lesson 05 teaches equals the registered operator.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import dcn_lessons.ops as ops
from dcn_lessons.ops import deform_conv as D

BACKENDS = ["tensor", "cpu-numba", "cuda-emulated"]
OPS = torch.ops.dcn_lessons


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DCN_LESSONS_BACKEND", request.param)
    return request.param


def _conv_args(dtype: torch.dtype, mask: bool, bias: bool, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    x, w = mk(2, 4, 5, 6).requires_grad_(), mk(6, 2, 3, 3).requires_grad_()  # weight groups 2
    off = (mk(2, 2 * 2 * 9, 3, 6) * 1.3 + 0.37).requires_grad_()  # offset groups 2, stride (2, 1)
    m = torch.rand(2, 2 * 9, 3, 6, generator=g).to(dtype).requires_grad_() if mask else None
    b = mk(6).requires_grad_() if bias else None
    return x, off, w, b, m, [2, 1], [1, 1], [1, 1]


# float16/bfloat16 run on the tensor backend on the CPU (cpu-numba takes float32/float64): opcheck checks
# that the dispatch is right for each
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mask,bias", [(True, True), (False, False)])
def test_opcheck_deform_conv2d(backend: str, dtype: torch.dtype, mask: bool, bias: bool) -> None:
    args = _conv_args(dtype, mask, bias)
    torch.library.opcheck(OPS.deform_conv2d.default, args)
    grad = torch.randn(2, 6, 3, 6).to(dtype)
    needs = [True, True, True, mask]
    torch.library.opcheck(OPS.deform_conv2d_backward.default,
                          (grad, *[None if t is None else t.detach() for t in args[:3]],
                           None if args[4] is None else args[4].detach(), *args[5:], needs))


def _roi_case(dtype: torch.dtype, ps: bool = False) -> tuple:
    g = torch.Generator().manual_seed(1)
    c = 2 * 2 * 3 if ps else 3
    x = torch.randn(2, c, 7, 8, generator=g).to(dtype).requires_grad_()
    rois = torch.tensor([[0, 0.5, 1.0, 9.0, 8.0], [1, -2.0, -1.0, 5.0, 11.0], [1, 3.0, 2.0, 3.0, 2.0]]).to(dtype)
    off = (torch.randn(3, 2, 2, 3, generator=g) * 0.3).to(dtype).requires_grad_()
    mask = torch.rand(3, 1, 2, 3, generator=g).to(dtype).requires_grad_()
    return x, rois, off, mask


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck_roi_family(backend: str, dtype: torch.dtype) -> None:
    x, rois, off, mask = _roi_case(dtype)
    size = [2, 3]
    torch.library.opcheck(OPS.roi_align.default, (x, rois, size, 0.5, 2, True))
    torch.library.opcheck(OPS.roi_align.default, (x, rois, size, 0.5, -1, False))
    torch.library.opcheck(OPS.deform_roi_pool.default, (x, rois, off, mask, size, 0.5, 0, 0.1))
    torch.library.opcheck(OPS.deform_roi_pool.default, (x, rois, off, None, size, 0.5, 2, 0.1))
    torch.library.opcheck(OPS.roi_pool.default, (x, rois, size, 0.5, "max"))
    torch.library.opcheck(OPS.roi_pool.default, (x, rois, size, 0.5, "avg"))
    xp, rois_p, off_p, _ = _roi_case(dtype, ps=True)
    torch.library.opcheck(OPS.ps_roi_align.default, (xp, rois_p, size, 1.0, 0))
    torch.library.opcheck(OPS.deform_ps_roi_pool.default, (xp, rois_p, off_p, size, 1.0, 2, 0.1))
    go = torch.randn(3, 3, 2, 3).to(dtype)
    torch.library.opcheck(OPS.roi_backward.default,
                          ("deform_roi_pool", go, x.detach(), rois, off.detach(), mask.detach(), size, 0.5, 0, 0.1,
                           True))


class _Net(nn.Module):
    """A small two-stage network: conv, DCNv2 layer, pooling, modulated deformable RoI pooling, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dcn = ops.ModulatedDeformConv2dPack(8, 8, 3, padding=1)
        self.pool = ops.ModulatedDeformRoIPoolPack(3, 8, deform_fc_channels=16, spatial_scale=0.5, sampling_ratio=2)
        self.fc = nn.Linear(8 * 9, 4)
        with torch.no_grad():  # move the offset branches off zero so that their gradients matter too
            self.dcn.conv_offset.weight.normal_(0, 0.01)
            self.pool.offset_fc[4].weight.normal_(0, 0.01)
            self.pool.mask_fc[4].weight.normal_(0, 0.01)

    def forward(self, x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.dcn(torch.relu(self.conv(x))))
        r = self.pool(nn.functional.avg_pool2d(f, 2), rois)
        return self.fc(r.flatten(1))


def _net_case() -> tuple[_Net, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    rois = torch.tensor([[0, 1.0, 2.0, 10.0, 12.0], [1, 3.0, 0.5, 15.0, 9.0], [1, 0.0, 0.0, 16.0, 16.0]])
    return _Net(), x, rois


def _forward_backward(fn, net: nn.Module, x: torch.Tensor, rois: torch.Tensor) -> list[torch.Tensor]:
    net.zero_grad()
    y = fn(x, rois)
    (y * torch.arange(y.numel()).view_as(y).cos()).sum().backward()
    return [y.detach()] + [p.grad.clone() for p in net.parameters()]


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compile_fullgraph_forward_and_backward(compiler: str) -> None:
    """fullgraph=True makes any graph break an error: the registered operators, their fake implementations and
    autograd formulas carry the whole network through Dynamo, AOTAutograd and (inductor) code generation."""
    torch._dynamo.reset()
    net, x, rois = _net_case()
    want = _forward_backward(net, net, x, rois)
    compiled = torch.compile(net, fullgraph=True, backend=compiler)
    got = _forward_backward(compiled, net, x, rois)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert any(p.abs().sum() > 0 for p in got[1:]), "no gradient reached the parameters"


def test_export_holds_the_operators_as_nodes() -> None:
    net, x, rois = _net_case()
    program = torch.export.export(net, (x, rois))
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count("dcn_lessons.deform_conv2d.default") == 1
    assert targets.count("dcn_lessons.deform_roi_pool.default") == 2  # the plain pool, then the deformed one
    torch.testing.assert_close(program.module()(x, rois), net(x, rois), rtol=0, atol=0)


def test_the_autograd_function_form_equals_the_registered_operator(backend: str) -> None:
    args = _conv_args(torch.float64, True, True, seed=3)
    leaves = [t for t in args[:5] if t is not None]
    y_op = ops.deform_conv2d(args[0], args[1], args[2], args[3], tuple(args[5]), tuple(args[6]), tuple(args[7]),
                             args[4])
    g_op = torch.autograd.grad(y_op.square().sum(), leaves)
    y_fn = D.DeformConv2dFunction.apply(*args[:5], tuple(args[5]), tuple(args[6]), tuple(args[7]))
    g_fn = torch.autograd.grad(y_fn.square().sum(), leaves)
    torch.testing.assert_close(y_fn, y_op, rtol=0, atol=0)
    for a, b in zip(g_fn, g_op):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_double_backward_names_the_operator() -> None:
    x, off, w, b, m, *conf = _conv_args(torch.float64, True, True)
    y = OPS.deform_conv2d(x, off, w, b, m, *conf)
    (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="dcn_lessons.deform_conv2d is differentiable once"):
        gx.sum().backward()
