"""Gather+GEMV MoE decode: Triton (interpreter on CPU) vs the PyTorch reference."""

import importlib

import pytest
import torch

from model.kernels import moe_decode, moe_decode_reference, moe_decode_triton
from model.kernels.moe_decode import MOE_BLOCK_D, MOE_BLOCK_I
from tests.model.kernels._helpers import cuda_only, interpreter_only

E = 4
# Token 0 and 1 share experts 1 and 3 in different slots; token 2 picks expert 2 in both slots.
EXPERT_IDX = torch.tensor([[1, 3], [3, 1], [2, 2]])  # (T=3, K=2)

MoEArgs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _operands(
    d: int, i: int, expert_idx: torch.Tensor, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> MoEArgs:
    g = torch.Generator().manual_seed(0)
    t, k = expert_idx.shape
    x = torch.randn(t, d, generator=g)  # (T, D)
    w_gate = torch.randn(E, d, i, generator=g) / d**0.5  # (E, D, I), scaled so activations are O(1)
    w_up = torch.randn(E, d, i, generator=g) / d**0.5  # (E, D, I)
    w_down = torch.randn(E, i, d, generator=g) / i**0.5  # (E, I, D)
    expert_weight = torch.softmax(torch.randn(t, k, generator=g), dim=-1)  # (T, K)
    return (
        x.to(device, dtype),
        w_gate.to(device, dtype),
        w_up.to(device, dtype),
        w_down.to(device, dtype),
        expert_idx.to(device),
        expert_weight.to(device, dtype),
    )


@interpreter_only
@pytest.mark.parametrize(
    ("d", "i"),
    [(32, 48), (2 * MOE_BLOCK_D + 5, MOE_BLOCK_I + 9)],  # one block each; several with masked tails
)
def test_triton_matches_reference(d: int, i: int) -> None:
    args = _operands(d, i, EXPERT_IDX)
    out = moe_decode(*args, force_triton=True)
    torch.testing.assert_close(out, moe_decode_reference(*args), atol=1e-5, rtol=0)


@interpreter_only
def test_token_result_independent_of_batch() -> None:
    x, w_gate, w_up, w_down, idx, weight = _operands(32, 48, EXPERT_IDX)
    batched = moe_decode_triton(x, w_gate, w_up, w_down, idx, weight)
    for t in range(x.shape[0]):
        alone = moe_decode_triton(x[t : t + 1], w_gate, w_up, w_down, idx[t : t + 1], weight[t : t + 1])
        assert torch.equal(batched[t : t + 1], alone), f"token {t} differs alone vs batched"


def test_dispatcher_uses_reference_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_triton(*args: object) -> torch.Tensor:
        raise AssertionError("Triton path taken for CPU tensors")

    # the package re-exports the dispatcher under the module's name, so fetch the module itself
    monkeypatch.setattr(importlib.import_module("model.kernels.moe_decode"), "moe_decode_triton", no_triton)
    args = _operands(32, 48, EXPERT_IDX)
    assert torch.equal(moe_decode(*args), moe_decode_reference(*args))


def test_rejects_inconsistent_shapes() -> None:
    x, w_gate, w_up, w_down, idx, weight = _operands(32, 48, EXPERT_IDX)
    with pytest.raises(ValueError, match="w_down"):
        moe_decode_triton(x, w_gate, w_up, w_down.transpose(1, 2), idx, weight)
    with pytest.raises(TypeError, match="int64"):
        moe_decode_triton(x, w_gate, w_up, w_down, idx.int(), weight)


@pytest.mark.cuda
@cuda_only
def test_cuda_bf16_matches_fp32_reference_and_is_batch_invariant() -> None:
    idx = torch.randint(0, E, (8, 2), generator=torch.Generator().manual_seed(1))
    x, w_gate, w_up, w_down, idx, weight = _operands(256, 384, idx, torch.bfloat16, "cuda")
    out = moe_decode_triton(x, w_gate, w_up, w_down, idx, weight)
    assert torch.equal(moe_decode(x, w_gate, w_up, w_down, idx, weight), out), "dispatcher skipped Triton"
    ref = moe_decode_reference(x.float(), w_gate.float(), w_up.float(), w_down.float(), idx, weight.float())
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=2e-2)
    for t in range(x.shape[0]):
        alone = moe_decode_triton(x[t : t + 1], w_gate, w_up, w_down, idx[t : t + 1], weight[t : t + 1])
        assert torch.equal(out[t : t + 1], alone), f"token {t} differs alone vs batched"
