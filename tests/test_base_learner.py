import pytest
import torch
import torch.nn.functional as F

from mtl.models.base_learner import adapt_theta, init_theta, logits, support_grad

WAY, SHOT, QUERY, DIM = 5, 3, 4, 16


def _task(episodes: int | None, dtype=torch.float32, seed: int = 0):
    """Random support/query features, targets and a non-zero θ; leading dim ``episodes`` if given."""
    g = torch.Generator().manual_seed(seed)
    lead = () if episodes is None else (episodes,)
    xs = torch.randn(*lead, WAY * SHOT, DIM, generator=g, dtype=dtype)
    xq = torch.randn(*lead, WAY * QUERY, DIM, generator=g, dtype=dtype)
    ys = torch.arange(WAY).repeat_interleave(SHOT)
    yq = torch.arange(WAY).repeat_interleave(QUERY)
    W = 0.3 * torch.randn(WAY, DIM, generator=g, dtype=dtype)
    b = 0.3 * torch.randn(WAY, generator=g, dtype=dtype)
    return xs, ys, xq, yq, W, b


def _ce(x, y, W, b):
    """Mean cross-entropy per episode, summed over episodes (so each θ gets its own episode's gradient)."""
    z = x @ W.transpose(-1, -2) + b.unsqueeze(-2)
    if z.ndim == 2:
        return F.cross_entropy(z, y)
    return sum(F.cross_entropy(z[e], y) for e in range(z.shape[0]))


def _reference_adapt(xs, ys, W, b, steps, lr, first_order=False):
    """Plain autograd inner loop, one episode."""
    for _ in range(steps):
        dW, db = torch.autograd.grad(_ce(xs, ys, W, b), (W, b), create_graph=not first_order)
        W, b = W - lr * dW, b - lr * db
    return W, b


def test_init_theta_is_zero():
    W, b = init_theta(4, 7, dtype=torch.float64)
    assert W.shape == (4, 7) and b.shape == (4,) and W.dtype == b.dtype == torch.float64
    assert not W.any() and not b.any()


def test_logits_broadcast_and_cast():
    xs, _, _, _, W, b = _task(3)
    z = logits(xs.bfloat16(), W, b)
    assert z.shape == (3, WAY * SHOT, WAY) and z.dtype == torch.float32
    torch.testing.assert_close(logits(xs, W, b)[1], xs[1] @ W.T + b)
    Wb = W.expand(3, WAY, DIM)
    torch.testing.assert_close(logits(xs, Wb, b.expand(3, WAY)), logits(xs, W, b))


@pytest.mark.parametrize("episodes", [None, 4])
def test_support_grad_matches_autograd(episodes):
    xs, ys, _, _, W, b = _task(episodes, dtype=torch.float64)
    W = W.expand(*xs.shape[:-2], WAY, DIM).clone().requires_grad_()
    b = b.expand(*xs.shape[:-2], WAY).clone().requires_grad_()
    want = torch.autograd.grad(_ce(xs, ys, W, b), (W, b))
    got = support_grad(xs, ys, W, b)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w)


def test_support_grad_accepts_batched_targets():
    xs, ys, _, _, W, b = _task(3, dtype=torch.float64)
    perm = torch.stack(
        [torch.randperm(len(ys), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    )
    yb = ys[perm]
    dW, db = support_grad(xs, yb, W, b)
    for e in range(3):
        We, be = W.clone().requires_grad_(), b.clone().requires_grad_()
        want = torch.autograd.grad(_ce(xs[e], yb[e], We, be), (We, be))
        torch.testing.assert_close(dW[e], want[0])
        torch.testing.assert_close(db[e], want[1])


@pytest.mark.parametrize("first_order", [False, True])
def test_adapt_matches_reference_theta_and_meta_gradient(first_order):
    episodes, steps, lr = 3, 5, 0.5
    xs, ys, xq, yq, W0, b0 = _task(episodes, dtype=torch.float64)
    xs.requires_grad_()
    W0.requires_grad_()
    b0.requires_grad_()

    W, b = adapt_theta(xs, ys, W0, b0, steps=steps, lr=lr, first_order=first_order)
    assert W.shape == (episodes, WAY, DIM) and b.shape == (episodes, WAY)
    got = torch.autograd.grad(_ce(xq, yq, W, b), (W0, b0, xs), allow_unused=True)

    ref_W, ref_b, ref_loss = [], [], 0.0
    for e in range(episodes):
        We, be = _reference_adapt(xs[e], ys, W0, b0, steps, lr, first_order)
        ref_W.append(We)
        ref_b.append(be)
        ref_loss = ref_loss + _ce(xq[e], yq, We, be)
    want = torch.autograd.grad(ref_loss, (W0, b0, xs), allow_unused=True)

    torch.testing.assert_close(W, torch.stack(ref_W))
    torch.testing.assert_close(b, torch.stack(ref_b))
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    if first_order:
        # Detached inner gradients carry nothing back to the support features.
        assert want[2] is None and got[2] is None
    else:
        assert got[2].abs().sum() > 0
        torch.testing.assert_close(got[2], want[2])


@pytest.mark.parametrize("dim", [2, 200])
def test_adapt_in_the_support_span_matches_the_reference_for_any_width(dim):
    """The inner loop runs on the support Gram matrix: the same θ' and meta-gradient whether the features
    are narrower (2) or much wider (200) than the 15 support rows, from a per-episode θ as well."""
    g = torch.Generator().manual_seed(dim)
    xs = torch.randn(2, WAY * SHOT, dim, generator=g, dtype=torch.float64, requires_grad=True)
    ys = torch.arange(WAY).repeat_interleave(SHOT)
    xq = torch.randn(2, WAY * QUERY, dim, generator=g, dtype=torch.float64)
    yq = torch.arange(WAY).repeat_interleave(QUERY)
    W0 = (0.3 * torch.randn(2, WAY, dim, generator=g, dtype=torch.float64)).requires_grad_()
    b0 = torch.zeros(WAY, dtype=torch.float64, requires_grad=True)
    W, b = adapt_theta(xs, ys, W0, b0, steps=4, lr=0.3)
    got = torch.autograd.grad(_ce(xq, yq, W, b), (W0, b0, xs))
    ref = [_reference_adapt(xs[e], ys, W0[e], b0, 4, 0.3) for e in range(2)]
    want = torch.autograd.grad(sum(_ce(xq[e], yq, *ref[e]) for e in range(2)), (W0, b0, xs))
    torch.testing.assert_close(W, torch.stack([r[0] for r in ref]))
    torch.testing.assert_close(b, torch.stack([r[1] for r in ref]))
    for a, w in zip(got, want, strict=True):
        torch.testing.assert_close(a, w)


def test_second_order_differs_from_first_order():
    xs, ys, xq, yq, W0, b0 = _task(None, dtype=torch.float64)
    W0.requires_grad_()
    grads = []
    for first_order in (False, True):
        W, b = adapt_theta(xs, ys, W0, b0, steps=3, lr=1.0, first_order=first_order)
        grads.append(torch.autograd.grad(_ce(xq, yq, W, b), W0)[0])
    assert (grads[0] - grads[1]).abs().max() > 1e-4


def test_adapt_gradcheck_second_order():
    g = torch.Generator().manual_seed(3)
    way, dim, n = 3, 4, 6
    xs = torch.randn(n, dim, generator=g, dtype=torch.float64, requires_grad=True)
    ys = torch.arange(way).repeat_interleave(n // way)
    xq = torch.randn(n, dim, generator=g, dtype=torch.float64)
    W = (0.5 * torch.randn(way, dim, generator=g, dtype=torch.float64)).requires_grad_()
    b = (0.5 * torch.randn(way, generator=g, dtype=torch.float64)).requires_grad_()

    def query_loss(W, b, xs):
        Wa, ba = adapt_theta(xs, ys, W, b, steps=2, lr=0.7)
        return F.cross_entropy(logits(xq, Wa, ba), ys)

    assert torch.autograd.gradcheck(query_loss, (W, b, xs))
    # The meta-gradient itself is differentiable (Hessian-vector products work through two levels).
    assert torch.autograd.gradgradcheck(query_loss, (W, b, xs))


def test_adapt_in_float32_from_bfloat16_features():
    xs, ys, _, _, W0, b0 = _task(2)
    W, b = adapt_theta(xs.bfloat16(), ys, W0, b0, steps=3, lr=0.1)
    Wr, br = adapt_theta(xs.bfloat16().float(), ys, W0, b0, steps=3, lr=0.1)
    assert W.dtype == b.dtype == torch.float32
    torch.testing.assert_close(W, Wr)
    torch.testing.assert_close(b, br)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        Wa, ba = adapt_theta(xs, ys, W0, b0, steps=3, lr=0.1)
    assert Wa.dtype == torch.float32
    torch.testing.assert_close(Wa, adapt_theta(xs, ys, W0, b0, steps=3, lr=0.1)[0])


def test_adapt_decreases_support_loss_and_keeps_no_graph_under_no_grad():
    xs, ys, _, _, W0, b0 = _task(4)
    W0.requires_grad_()
    with torch.no_grad():
        W, b = adapt_theta(xs, ys, W0, b0, steps=50, lr=0.5)
    assert not W.requires_grad and W.grad_fn is None and b.grad_fn is None
    assert _ce(xs, ys, W, b) < _ce(xs, ys, W0.detach(), b0)
    W1, b1 = adapt_theta(xs, ys, W0, b0, steps=0, lr=0.5)
    assert W1 is W0 and b1 is b0
    with pytest.raises(ValueError):
        adapt_theta(xs, ys, W0, b0, steps=-1, lr=0.5)
