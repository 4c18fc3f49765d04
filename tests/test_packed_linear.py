"""ops.PackedLinear (charrnn::pack_linear, charrnn::packed_linear): the CPU sampling loop's
products for the gru, lstm and rnn-torch cells, against torch's linear."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from charrnn_ext.ops import PACKED_LINEAR_ALIGN, PackedLinear

from test_ops import machine_capabilities

PACK, LINEAR = torch.ops.charrnn.pack_linear, torch.ops.charrnn.packed_linear


def assert_close_to_float64(got, x, w, b):
    """Against torch's linear in float64; float32's rounding grows with the sum's length K."""
    want = F.linear(*(None if t is None else t.double() for t in (x, w, b)))
    K = x.shape[1]
    tol = dict(rtol=1e-12, atol=1e-12 * K) if got.dtype == torch.float64 else dict(rtol=1e-5, atol=2e-6 * K ** 0.5)
    torch.testing.assert_close(got.double(), want, **tol)

# (B, K, N): one row (a sample), odd sizes that leave partial panels at every vector width, more
# rows than one task takes (64), and a product split over the thread pool by columns.
SHAPES = [(1, 1, 1), (3, 5, 17), (1, 64, 65), (70, 13, 131), (2, 512, 2048), (1, 576, 2048)]


def make(B, K, N, dtype, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    args = [torch.randn(B, K, generator=g, dtype=dtype), torch.randn(N, K, generator=g, dtype=dtype)]
    return args + [torch.randn(N, generator=g, dtype=dtype) if bias else None]


@pytest.mark.parametrize("B, K, N", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_linear(B, K, N, dtype, bias):
    x, w, b = make(B, K, N, dtype, bias=bias)
    got = PackedLinear(w, b)(x)
    assert got.shape == (B, N) and got.is_contiguous()
    assert_close_to_float64(got, x, w, b)


def test_non_contiguous_inputs_and_a_packed_copy_that_outlives_the_weight():
    x, w, b = make(6, 40, 24, torch.float64)
    want = F.linear(x, w, b).clone()
    wide = torch.zeros(6, 80, dtype=torch.float64)
    wide[:, ::2] = x
    layer = PackedLinear(w.t().contiguous().t(), torch.stack([b, b], 1)[:, 0])
    w.zero_()  # packed at construction: later changes to the weight do not reach it
    torch.testing.assert_close(layer(wide[:, ::2]), want, rtol=1e-12, atol=1e-12)


def test_packed_size_is_fixed_by_the_shape():
    for N, K in ((1, 3), (16, 2), (17, 5), (2048, 512)):
        packed = PACK(torch.randn(N, K))
        assert packed.shape == (-(-N // PACKED_LINEAR_ALIGN) * PACKED_LINEAR_ALIGN * K,)


def test_bad_arguments_name_the_argument():
    x, w, b = make(2, 5, 7, torch.float32)
    packed = PACK(w)
    with pytest.raises(ValueError, match=r"pack_linear's weight must have shape \[N, K\]"):
        PACK(torch.randn(3))
    with pytest.raises(TypeError, match="float32 or float64"):
        PACK(torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"input must have shape \[B, K\]"):
        LINEAR(x[0], packed, 7, b)
    with pytest.raises(ValueError, match=r"packed must be pack_linear\(weight\) of a weight \[N, K\] = \[7, 6\]"):
        LINEAR(torch.randn(2, 6), packed, 7, b)  # input's K is not the weight's
    with pytest.raises(ValueError, match="out_features must be > 0"):
        LINEAR(x, packed, 0, None)
    with pytest.raises(ValueError, match=r"bias must have shape \[N\] = \[7\]"):
        LINEAR(x, packed, 7, torch.randn(6))
    with pytest.raises(TypeError, match="packed must have the input's dtype"):
        LINEAR(x.double(), PACK(w), 7, None)
    with pytest.raises(TypeError, match="bias must have the input's dtype"):
        LINEAR(x, packed, 7, b.double())


def test_opcheck():
    for dtype, bias in ((torch.float32, True), (torch.float64, False)):
        x, w, b = make(3, 9, 21, dtype, bias=bias)
        for op, args in ((PACK, (w,)), (LINEAR, (x, PACK(w), 21, b))):
            result = torch.library.opcheck(op, args)
            assert set(result.values()) == {"SUCCESS"}, (op, result)


CAPABILITY_CHILD = """
import sys, torch, charrnn_ext
from charrnn_ext.ops import PackedLinear
x, w, b = torch.load(sys.argv[1])
torch.save(dict(info=charrnn_ext.build_info(), out=PackedLinear(w, b)(x)), sys.argv[2])
"""


@pytest.mark.parametrize("capability", machine_capabilities())
def test_every_cpu_capability(capability, tmp_path):
    """Each vectorised variant in a fresh interpreter: its panel width divides the fixed packed
    size, and the products are torch's."""
    for dtype in (torch.float32, torch.float64):
        args = make(3, 37, 45, dtype, seed=5)
        torch.save(args, tmp_path / "in.pt")
        proc = subprocess.run([sys.executable, "-c", CAPABILITY_CHILD, str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
                              env=dict(os.environ, ATEN_CPU_CAPABILITY=capability), capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = torch.load(tmp_path / "out.pt")
        assert got["info"]["cpu_capability"] == capability
        assert_close_to_float64(got["out"], *args)
