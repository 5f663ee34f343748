"""HTNet: the seed checkpoint's exact state-dict layout, parameter count, logits out, and equality with a plain
transcription of the seed's forward pass (patch order, block order, heads per level)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from au_annotate.model import HTNet, HTNetConfig, PixelBlend

# The seed's published checkpoint (best_htnet_model.pth): 56 tensors, names and shapes as that file holds them.
SEED_STATE_SHAPES: list[tuple[str, tuple[int, ...]]] = [
    ("to_patch_embedding.1.weight", (64, 147, 1, 1)),
    ("to_patch_embedding.1.bias", (64,)),
    ("layers.0.0.pos_emb", (4,)),
    ("layers.0.0.layers.0.0.norm.g", (1, 64, 1, 1)),
    ("layers.0.0.layers.0.0.norm.b", (1, 64, 1, 1)),
    ("layers.0.0.layers.0.0.fn.to_qkv.weight", (192, 64, 1, 1)),
    ("layers.0.0.layers.0.0.fn.to_out.0.weight", (64, 64, 1, 1)),
    ("layers.0.0.layers.0.0.fn.to_out.0.bias", (64,)),
    ("layers.0.0.layers.0.1.norm.g", (1, 64, 1, 1)),
    ("layers.0.0.layers.0.1.norm.b", (1, 64, 1, 1)),
    ("layers.0.0.layers.0.1.fn.net.0.weight", (256, 64, 1, 1)),
    ("layers.0.0.layers.0.1.fn.net.0.bias", (256,)),
    ("layers.0.0.layers.0.1.fn.net.3.weight", (64, 256, 1, 1)),
    ("layers.0.0.layers.0.1.fn.net.3.bias", (64,)),
    ("layers.0.0.layers.1.0.norm.g", (1, 64, 1, 1)),
    ("layers.0.0.layers.1.0.norm.b", (1, 64, 1, 1)),
    ("layers.0.0.layers.1.0.fn.to_qkv.weight", (192, 64, 1, 1)),
    ("layers.0.0.layers.1.0.fn.to_out.0.weight", (64, 64, 1, 1)),
    ("layers.0.0.layers.1.0.fn.to_out.0.bias", (64,)),
    ("layers.0.0.layers.1.1.norm.g", (1, 64, 1, 1)),
    ("layers.0.0.layers.1.1.norm.b", (1, 64, 1, 1)),
    ("layers.0.0.layers.1.1.fn.net.0.weight", (256, 64, 1, 1)),
    ("layers.0.0.layers.1.1.fn.net.0.bias", (256,)),
    ("layers.0.0.layers.1.1.fn.net.3.weight", (64, 256, 1, 1)),
    ("layers.0.0.layers.1.1.fn.net.3.bias", (64,)),
    ("layers.0.1.0.weight", (128, 64, 3, 3)),
    ("layers.0.1.0.bias", (128,)),
    ("layers.0.1.1.g", (1, 128, 1, 1)),
    ("layers.0.1.1.b", (1, 128, 1, 1)),
    ("layers.1.0.pos_emb", (4,)),
    ("layers.1.0.layers.0.0.norm.g", (1, 128, 1, 1)),
    ("layers.1.0.layers.0.0.norm.b", (1, 128, 1, 1)),
    ("layers.1.0.layers.0.0.fn.to_qkv.weight", (384, 128, 1, 1)),
    ("layers.1.0.layers.0.0.fn.to_out.0.weight", (128, 128, 1, 1)),
    ("layers.1.0.layers.0.0.fn.to_out.0.bias", (128,)),
    ("layers.1.0.layers.0.1.norm.g", (1, 128, 1, 1)),
    ("layers.1.0.layers.0.1.norm.b", (1, 128, 1, 1)),
    ("layers.1.0.layers.0.1.fn.net.0.weight", (512, 128, 1, 1)),
    ("layers.1.0.layers.0.1.fn.net.0.bias", (512,)),
    ("layers.1.0.layers.0.1.fn.net.3.weight", (128, 512, 1, 1)),
    ("layers.1.0.layers.0.1.fn.net.3.bias", (128,)),
    ("layers.1.0.layers.1.0.norm.g", (1, 128, 1, 1)),
    ("layers.1.0.layers.1.0.norm.b", (1, 128, 1, 1)),
    ("layers.1.0.layers.1.0.fn.to_qkv.weight", (384, 128, 1, 1)),
    ("layers.1.0.layers.1.0.fn.to_out.0.weight", (128, 128, 1, 1)),
    ("layers.1.0.layers.1.0.fn.to_out.0.bias", (128,)),
    ("layers.1.0.layers.1.1.norm.g", (1, 128, 1, 1)),
    ("layers.1.0.layers.1.1.norm.b", (1, 128, 1, 1)),
    ("layers.1.0.layers.1.1.fn.net.0.weight", (512, 128, 1, 1)),
    ("layers.1.0.layers.1.1.fn.net.0.bias", (512,)),
    ("layers.1.0.layers.1.1.fn.net.3.weight", (128, 512, 1, 1)),
    ("layers.1.0.layers.1.1.fn.net.3.bias", (128,)),
    ("mlp_head.0.g", (1, 128, 1, 1)),
    ("mlp_head.0.b", (1, 128, 1, 1)),
    ("mlp_head.2.weight", (25, 128)),
    ("mlp_head.2.bias", (25,)),
]


def _seed_like_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A plain state dict with the seed's names and shapes and random values (no real weights needed)."""
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=g) * 0.2 for name, shape in SEED_STATE_SHAPES}


def test_seed_layout_is_56_tensors_and_582433_parameters() -> None:
    assert len(SEED_STATE_SHAPES) == 56
    assert sum(math.prod(shape) for _, shape in SEED_STATE_SHAPES) == 582_433
    model = HTNet()
    assert sum(p.numel() for p in model.parameters()) == 582_433
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == SEED_STATE_SHAPES


def test_strict_load_of_seed_layout_succeeds() -> None:
    model = HTNet()
    result = model.load_state_dict(_seed_like_state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_from_config_and_dict_round_trip() -> None:
    cfg = HTNetConfig()
    assert HTNetConfig.from_dict(cfg.to_dict()) == cfg
    model = HTNet.from_config(cfg)
    assert model.config == cfg
    with pytest.raises(ValueError, match="unknown HTNet config key.*dim_head"):
        HTNetConfig.from_dict({**cfg.to_dict(), "dim_head": 64})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_size": 30}, "not divisible by patch_size"),
        ({"dim": 66}, "not divisible by heads"),
        ({"num_hierarchies": 4}, "cannot be cut"),
        ({"dropout": 1.5}, "dropout"),
        ({"heads": 0}, "positive integer"),
    ],
)
def test_invalid_configs_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HTNetConfig(**kwargs)


def test_output_is_logits_of_shape_batch_by_25() -> None:
    torch.manual_seed(0)
    model = HTNet().eval()
    model.load_state_dict(_seed_like_state_dict(1))
    with torch.inference_mode():
        out = model(torch.rand(5, 3, 28, 28))
    assert out.shape == (5, 25) and out.dtype == torch.float32
    # logits, not probabilities: no Sigmoid module inside and values leave [0, 1]
    assert not any(isinstance(m, torch.nn.Sigmoid) for m in model.modules())
    assert (out < 0).any() or (out > 1).any()


def test_wrong_input_shape_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"expects input \(B, 3, 28, 28\)"):
        HTNet()(torch.rand(2, 3, 32, 32))


def test_other_configs_build_and_run() -> None:
    model = HTNet(image_size=56, patch_size=7, dim=32, heads=2, num_hierarchies=3, block_repeats=1, num_classes=7)
    assert model(torch.rand(3, 3, 56, 56)).shape == (3, 7)
    assert HTNet(num_hierarchies=1)(torch.rand(2, 3, 28, 28)).shape == (2, 25)


def test_dropout_only_in_training() -> None:
    model = HTNet(dropout=0.5)
    x = torch.rand(4, 3, 28, 28)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, model(x))


# ---------------------------------------------------------------- reference: the seed's forward, spelled out with loops


def _ln(x: torch.Tensor, g: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    var = torch.var(x, dim=1, unbiased=False, keepdim=True)
    mean = torch.mean(x, dim=1, keepdim=True)
    return (x - mean) / (var + 1e-5).sqrt() * g + b


def _conv1x1(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    y = torch.einsum("oc,bchw->bohw", w[:, :, 0, 0], x)
    return y if b is None else y + b[None, :, None, None]


def _attention(x: torch.Tensor, sd: dict, pre: str, heads: int) -> torch.Tensor:
    b, c, h, w = x.shape
    d = c // heads
    qkv = _conv1x1(x, sd[pre + "to_qkv.weight"], None).reshape(b, 3 * c, h * w)  # tokens in (x y) row-major order
    q, k, v = qkv[:, :c], qkv[:, c : 2 * c], qkv[:, 2 * c :]
    out = torch.empty(b, c, h * w)
    for head in range(heads):
        sl = slice(head * d, (head + 1) * d)  # channel = head * d + i ('b (h d) x y')
        dots = torch.einsum("bdi,bdj->bij", q[:, sl], k[:, sl]) * d**-0.5
        out[:, sl] = torch.einsum("bij,bdj->bdi", dots.softmax(-1), v[:, sl])
    return _conv1x1(out.reshape(b, c, h, w), sd[pre + "to_out.0.weight"], sd[pre + "to_out.0.bias"])


def _transformer(x: torch.Tensor, sd: dict, pre: str, heads: int, depth: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    x = x + sd[pre + "pos_emb"][: h * w].reshape(h, w)
    for j in range(depth):
        a = f"{pre}layers.{j}.0."
        x = _attention(_ln(x, sd[a + "norm.g"], sd[a + "norm.b"]), sd, a + "fn.", heads) + x
        f = f"{pre}layers.{j}.1."
        y = _ln(x, sd[f + "norm.g"], sd[f + "norm.b"])
        y = F.gelu(_conv1x1(y, sd[f + "fn.net.0.weight"], sd[f + "fn.net.0.bias"]))
        x = _conv1x1(y, sd[f + "fn.net.3.weight"], sd[f + "fn.net.3.bias"]) + x
    return x


def _seed_reference(sd: dict, img: torch.Tensor, *, patch: int = 7, heads: int = 4, levels: int = 2) -> torch.Tensor:
    b, c, hh, ww = img.shape
    n = hh // patch
    emb_in = torch.empty(b, patch * patch * c, n, n)
    for i in range(n):
        for j in range(n):
            for p1 in range(patch):
                for p2 in range(patch):
                    for ch in range(c):  # 'b c (h p1) (w p2) -> b (p1 p2 c) h w'
                        emb_in[:, (p1 * patch + p2) * c + ch, i, j] = img[:, ch, i * patch + p1, j * patch + p2]
    x = _conv1x1(emb_in, sd["to_patch_embedding.1.weight"], sd["to_patch_embedding.1.bias"])
    for lvl in range(levels):
        blocks = 2 ** (levels - 1 - lvl)
        bh, bw = x.shape[2] // blocks, x.shape[3] // blocks
        out = torch.empty_like(x)
        for r in range(blocks):  # each block attends on its own
            for s in range(blocks):
                region = (slice(None), slice(None), slice(r * bh, (r + 1) * bh), slice(s * bw, (s + 1) * bw))
                out[region] = _transformer(x[region], sd, f"layers.{lvl}.0.", heads * 2**lvl, 2)
        x = out
        if lvl < levels - 1:
            a = f"layers.{lvl}.1."
            x = F.conv2d(x, sd[a + "0.weight"], sd[a + "0.bias"], padding=1)
            x = F.max_pool2d(_ln(x, sd[a + "1.g"], sd[a + "1.b"]), 3, stride=2, padding=1)
    x = _ln(x, sd["mlp_head.0.g"], sd["mlp_head.0.b"]).mean(dim=(2, 3))
    return x @ sd["mlp_head.2.weight"].T + sd["mlp_head.2.bias"]


def test_forward_equals_seed_reference_transcription() -> None:
    sd = _seed_like_state_dict(3)
    model = HTNet().eval()
    model.load_state_dict(sd)
    img = torch.rand(3, 3, 28, 28, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        ours = model(img)
    ref = _seed_reference(sd, img)
    assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-4), (ours - ref).abs().max()
    # the reference is sensitive to the layout: a transposed picture gives different logits
    assert not torch.allclose(model(img.transpose(2, 3)), ref, atol=1e-3)


def test_seed_layout_file_loads_through_load_checkpoint(tmp_path) -> None:
    from au_annotate.weights import SEED25_AU_ORDER, load_checkpoint

    path = tmp_path / "best_htnet_model.pth"
    sd = _seed_like_state_dict(5)
    torch.save(sd, path)  # a plain dict of tensors, like the seed's published checkpoint
    loaded = load_checkpoint(path, au_order="seed25")
    assert loaded.au_names == SEED25_AU_ORDER
    img = torch.rand(2, 3, 28, 28)
    with torch.inference_mode():
        assert torch.allclose(loaded.model(img), _seed_reference(sd, img), atol=1e-4, rtol=1e-4)


def test_pixel_blend_is_the_weighted_mean_of_both_probabilities() -> None:
    """PixelBlend: sigmoid(output) of each AU = (1 - w) HTNet's probability + w the pixel regression's (read in (H, W, C)
    order, standardised), a constant where the regression saw one class; the outputs after the AUs are HTNet's."""
    torch.manual_seed(1)
    net = HTNet.from_config(HTNetConfig(dim=16, heads=2, block_repeats=1, num_classes=5)).eval()
    blend = PixelBlend(net, 3, 0.25).eval()
    with torch.no_grad():
        blend.linear.weight.normal_(0, 0.02)
        blend.linear.bias.normal_(0, 0.5)
        blend.mean.uniform_(0.2, 0.6)
        blend.scale.uniform_(0.5, 2.0)
        blend.const[1] = 0.3
    x = torch.rand(4, 3, 28, 28)
    with torch.no_grad():
        z, out = net(x), blend(x)
    u = (x.permute(0, 2, 3, 1).reshape(4, -1) - blend.mean) / blend.scale
    p_lr = torch.sigmoid(u @ blend.linear.weight.T + blend.linear.bias)
    p_lr[:, 1] = 0.3
    expected = 0.75 * torch.sigmoid(z[:, :3]) + 0.25 * p_lr
    assert torch.allclose(torch.sigmoid(out[:, :3]), expected, atol=1e-6)
    assert torch.equal(out[:, 3:], z[:, 3:])
    with pytest.raises(ValueError, match="weight"):
        PixelBlend(net, 3, 0.0)
