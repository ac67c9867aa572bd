"""flashcore_cupy.torch: the autograd adapter on a GPU against SDPA (skipped without torch)."""

import numpy as np
import pytest

from flashcore_cupy import reference

pytestmark = pytest.mark.gpu
torch = pytest.importorskip("torch")


def _sdpa(q, k, v, causal):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                            enable_gqa=q.shape[1] != k.shape[1])


@pytest.mark.parametrize("dtype, causal, heads", [(torch.float16, False, (4, 4)), (torch.bfloat16, True, (4, 2))])
def test_gradients_match_reference_and_sdpa(dtype, causal, heads):
    from flashcore_cupy.torch import attention

    gen = torch.Generator(device="cuda").manual_seed(0)
    hq, hkv = heads
    q, k, v = (torch.randn(2, h, 200, 64, device="cuda", dtype=dtype, generator=gen) for h in (hq, hkv, hkv))
    g = torch.randn(2, hq, 200, 64, device="cuda", dtype=dtype, generator=gen)
    grads = {}
    for name, fn in (("ours", lambda a, b, c: attention(a, b, c, causal=causal)), ("sdpa", lambda a, b, c: _sdpa(a, b, c, causal))):
        x = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        fn(*x).backward(g)
        grads[name] = [t.grad for t in x]
    out, lse = reference.attention(*(t.float().cpu().numpy() for t in (q, k, v)), causal=causal, return_lse=True)
    ref = reference.attention_backward(g.float().cpu().numpy(), *(t.float().cpu().numpy() for t in (q, k, v)),
                                       out, lse, causal=causal)
    bound = 5e-3 if dtype == torch.float16 else 2e-2
    for i, name in enumerate(("dq", "dk", "dv")):
        ours = reference.rel_error(grads["ours"][i].float().cpu().numpy(), ref[i])
        sdpa = reference.rel_error(grads["sdpa"][i].float().cpu().numpy(), ref[i])
        assert ours <= bound and ours <= max(2 * sdpa, 1e-6), f"{name}: ours {ours:.2e}, SDPA {sdpa:.2e}"


class _Block(torch.nn.Module):
    """A pre-norm transformer block, its attention computed by `attend` in bfloat16."""

    def __init__(self, width=256, heads=4):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        self.qkv, self.proj = torch.nn.Linear(width, 3 * width), torch.nn.Linear(width, width)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.GELU(),
                                       torch.nn.Linear(4 * width, width))

    def forward(self, x, attend):
        b, s, w = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        a = attend(*(t.to(torch.bfloat16).contiguous() for t in (q, k, v))).float()
        x = x + self.proj(a.transpose(1, 2).reshape(b, s, w))
        return x + self.mlp(self.norm2(x))


def test_a_training_loop_ends_where_sdpa_does():
    """50 AdamW steps of one block on random data from the same initial weights, once with the
    adapter and once with SDPA: the final losses within 2 % of each other."""
    from flashcore_cupy.torch import attention

    torch.manual_seed(0)
    data = torch.randn(8, 128, 256, device="cuda")
    target = torch.randn(8, 128, 256, device="cuda")
    init = _Block().cuda().state_dict()
    losses = {}
    for name, attend in (("ours", lambda q, k, v: attention(q, k, v, causal=True)),
                         ("sdpa", lambda q, k, v: _sdpa(q, k, v, True))):
        block = _Block().cuda()
        block.load_state_dict(init)
        opt = torch.optim.AdamW(block.parameters(), lr=1e-3)
        for _ in range(50):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(block(data, attend), target)
            loss.backward()
            opt.step()
        losses[name] = loss.item()
    assert np.isfinite(losses["ours"])
    assert abs(losses["ours"] - losses["sdpa"]) <= 0.02 * losses["sdpa"], losses
