"""HTNet (NesT-style hierarchical transformer) for multi-label AU logits from 28x28 flow pictures; no I/O here.

The module layout reproduces the seed checkpoint's state-dict names and shapes exactly (listed in
tests/test_model.py), so its published plain state dict loads with ``strict=True``. Unlike the seed, ``forward``
returns logits: apply the sigmoid once, outside (the seed's sigmoid sat inside the model and its evaluation added a
second one).

Internally the feature map is kept channels-last, (B, H, W, C), so the 1x1 convolutions run as linear layers on tokens
and the channel LayerNorm is torch's fused layer_norm: the same numbers as the seed's NCHW code (a test checks it against
a plain transcription), about three times faster on CPU. Parameters keep the seed's Conv2d shapes and names.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from au_annotate.errors import check_keys


@dataclass(frozen=True)
class HTNetConfig:
    """Architecture hyper-parameters; the defaults are the seed's configuration (582,433 parameters)."""

    image_size: int = 28
    patch_size: int = 7
    dim: int = 64
    heads: int = 4  # at the top level; each lower level doubles both dim and heads (the seed: 4 then 8, size 16)
    num_hierarchies: int = 2
    block_repeats: int = 2
    mlp_mult: int = 4
    channels: int = 3
    num_classes: int = 25
    dropout: float = 0.0

    def __post_init__(self) -> None:
        """Reject configurations the architecture cannot realise, with the reason."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "dropout":
                if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) < 1.0:
                    raise ValueError(f"HTNetConfig.dropout must be a float in [0, 1), got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"HTNetConfig.{f.name} must be a positive integer, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}")
        fmap = self.image_size // self.patch_size
        blocks = 2 ** (self.num_hierarchies - 1)
        if fmap % blocks:  # then every level's map (halved by each pooling) splits evenly, one block size throughout
            raise ValueError(
                f"the {fmap}x{fmap} patch map cannot be cut into {blocks}x{blocks} blocks "
                f"(num_hierarchies {self.num_hierarchies})"
            )
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")

    def to_dict(self) -> dict:
        """Plain dict of the fields (stored in checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> HTNetConfig:
        """Build from a dict; unknown keys are an error (a checkpoint from another architecture must not half-load)."""
        if not isinstance(d, dict):
            raise ValueError(f"HTNet config must be a dict, got {type(d).__name__}")
        check_keys(d, (f.name for f in fields(cls)), "HTNet config key")
        return cls(**d)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels: biased variance, eps 1e-5, gain g and bias b stored as (1, C, 1, 1) like the seed.

    forward takes channels-last tensors (..., C), where this is torch's fused layer_norm over the last axis."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.b = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        c = self.g.shape[1]
        return F.layer_norm(x, (c,), self.g.reshape(c), self.b.reshape(c), self.eps)


def _pointwise(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """A 1x1 Conv2d applied to channels-last tokens (..., C_in) -> (..., C_out): the same numbers as the convolution."""
    return F.linear(x, conv.weight.reshape(conv.out_channels, conv.in_channels), conv.bias)


class PreNorm(nn.Module):
    """Channel LayerNorm, then the wrapped function (the residual is added by the caller)."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = ChannelLayerNorm(dim)
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(self.norm(x))


class FeedForward(nn.Module):
    """1x1 conv C -> mult*C, GELU, dropout, 1x1 conv back to C, dropout; on tokens (B, N, C)."""

    def __init__(self, dim: int, mlp_mult: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(dim, dim * mlp_mult, 1),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Conv2d(dim * mlp_mult, dim, 1),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        net = self.net
        x = net[2](net[1](_pointwise(x, net[0])))
        return net[4](_pointwise(x, net[3]))


class Attention(nn.Module):
    """Multi-head self-attention over the tokens (B, N, C) of one block; heads of size C / heads."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim // heads
        self.dropout = dropout
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        # (B, N, 3C) -> 3 x (B, heads, N, d); channel index = head * d + i, as the seed's 'b (h d) x y'
        q, k, v = _pointwise(x, self.to_qkv).reshape(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(b, n, c)
        return self.to_out[1](_pointwise(out, self.to_out[0]))


class Transformer(nn.Module):
    """One hierarchy level on block tokens (B, h*w, C) in row-major (x y) order: learned positional vector of length
    seq_len added to every channel (the seed's (h, w) map), then depth x (attention, feed-forward) with residuals."""

    def __init__(self, dim: int, seq_len: int, depth: int, heads: int, mlp_mult: int, dropout: float) -> None:
        super().__init__()
        self.pos_emb = nn.Parameter(torch.randn(seq_len))
        self.layers = nn.ModuleList(
            nn.ModuleList([PreNorm(dim, Attention(dim, heads, dropout)), PreNorm(dim, FeedForward(dim, mlp_mult, dropout))])
            for _ in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.pos_emb[: x.shape[1], None]
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return x


class PatchRearrange(nn.Module):
    """(B, c, H*p, W*p) -> (B, H, W, p*p*c): each p x p patch as a channels-last vector in the seed's (p1 p2 c) order."""

    def __init__(self, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size

    def forward(self, x: Tensor) -> Tensor:
        b, c, hh, ww = x.shape
        p = self.patch_size
        h, w = hh // p, ww // p
        return x.reshape(b, c, h, p, w, p).permute(0, 2, 4, 3, 5, 1).reshape(b, h, w, p * p * c)


class PatchEmbedding(nn.Sequential):
    """Index 0: the (p1 p2 c) patch rearrangement; index 1: the 1x1 conv 147 -> dim, applied channels-last."""

    def forward(self, x: Tensor) -> Tensor:
        return _pointwise(self[0](x), self[1])


class Aggregate(nn.Sequential):
    """Between levels on (B, H, W, C): 3x3 conv C -> 2C (padding 1), channel LayerNorm, max-pool 3 / stride 2 / pad 1."""

    def forward(self, x: Tensor) -> Tensor:
        conv, norm, pool = self
        y = conv(x.permute(0, 3, 1, 2))  # NCHW view of channels-last memory
        y = norm(y.permute(0, 2, 3, 1))
        return pool(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class SpatialMean(nn.Module):
    """(B, H, W, C) -> (B, C): mean over space (the seed's Reduce('b c h w -> b c', 'mean'))."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(1, 2))


def _to_blocks(x: Tensor, n: int) -> Tensor:
    """(B, n*h, n*w, C) -> (B*n*n, h*w, C): the seed's 'b c (b1 h) (b2 w) -> (b b1 b2) c h w', as block tokens."""
    b, hh, ww, c = x.shape
    h, w = hh // n, ww // n
    return x.reshape(b, n, h, n, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b * n * n, h * w, c)


def _from_blocks(x: Tensor, n: int, h: int, w: int) -> Tensor:
    """Inverse of _to_blocks: (B*n*n, h*w, C) -> (B, n*h, n*w, C)."""
    bnn, _, c = x.shape
    b = bnn // (n * n)
    return x.reshape(b, n, n, h, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, n * h, n * w, c)


class HTNet(nn.Module):
    """NesT-style HTNet: (B, 3, 28, 28) float in [0, 1] -> AU logits (B, num_classes). No sigmoid inside."""

    def __init__(
        self,
        *,
        image_size: int = 28,
        patch_size: int = 7,
        dim: int = 64,
        heads: int = 4,
        num_hierarchies: int = 2,
        block_repeats: int = 2,
        mlp_mult: int = 4,
        channels: int = 3,
        num_classes: int = 25,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.config = HTNetConfig(
            image_size=image_size, patch_size=patch_size, dim=dim, heads=heads, num_hierarchies=num_hierarchies,
            block_repeats=block_repeats, mlp_mult=mlp_mult, channels=channels, num_classes=num_classes, dropout=dropout,
        )
        fmap = image_size // patch_size
        seq_len = (fmap // 2 ** (num_hierarchies - 1)) ** 2  # tokens per block, the same at every level
        mults = [2**i for i in range(num_hierarchies)]  # top level first: 1, 2, 4, ...
        dims = [dim * m for m in mults]
        self.to_patch_embedding = PatchEmbedding(PatchRearrange(patch_size), nn.Conv2d(channels * patch_size**2, dims[0], 1))
        self.layers = nn.ModuleList()
        for i, m in enumerate(mults):
            dim_in = dims[i]
            is_last = i == num_hierarchies - 1
            self.layers.append(
                nn.ModuleList([
                    Transformer(dim_in, seq_len, block_repeats, heads * m, mlp_mult, dropout),
                    nn.Identity() if is_last else Aggregate(
                        nn.Conv2d(dim_in, dims[i + 1], 3, padding=1),
                        ChannelLayerNorm(dims[i + 1]),
                        nn.MaxPool2d(3, stride=2, padding=1),
                    ),
                ])
            )
        self.mlp_head = nn.Sequential(ChannelLayerNorm(dims[-1]), SpatialMean(), nn.Linear(dims[-1], num_classes))

    @classmethod
    def from_config(cls, config: HTNetConfig) -> HTNet:
        """Build a fresh (randomly initialised) model for a configuration."""
        return cls(**config.to_dict())

    def forward(self, x: Tensor) -> Tensor:
        cfg = self.config
        if x.ndim != 4 or tuple(x.shape[1:]) != (cfg.channels, cfg.image_size, cfg.image_size):
            raise ValueError(
                f"HTNet expects input (B, {cfg.channels}, {cfg.image_size}, {cfg.image_size}), got {tuple(x.shape)}"
            )
        x = self.to_patch_embedding(x)  # channels-last (B, H, W, C) from here on
        n_levels = len(self.layers)
        for i, (transformer, aggregate) in enumerate(self.layers):
            blocks = 2 ** (n_levels - 1 - i)
            h, w = x.shape[1] // blocks, x.shape[2] // blocks
            x = aggregate(_from_blocks(transformer(_to_blocks(x, blocks)), blocks, h, w))
        logits = self.mlp_head(x)
        assert logits.shape == (x.shape[0], cfg.num_classes)
        return logits


class HTNetEnsemble(nn.Module):
    """K HTNets of one configuration whose probabilities are averaged; forward returns the logit of that mean.

    So a runner that applies the sigmoid once gets mean(sigmoid(logits_k)) exactly as an ensemble's probability,
    computed stably in log space: log p = logsumexp(-softplus(-z_k)) - log K, log(1-p) = logsumexp(-softplus(z_k)) - log K.
    """

    def __init__(self, members: list[HTNet]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one HTNet")
        configs = {m.config for m in members}
        if len(configs) != 1:
            raise ValueError("ensemble members must share one HTNet configuration")
        self.members = nn.ModuleList(members)
        self.config = members[0].config

    @classmethod
    def from_config(cls, config: HTNetConfig, size: int) -> HTNetEnsemble:
        """`size` fresh members of one configuration."""
        return cls([HTNet.from_config(config) for _ in range(size)])

    def forward(self, x: Tensor) -> Tensor:
        z = torch.stack([m(x) for m in self.members])  # (K, B, n)
        log_k = math.log(len(self.members))
        log_p = torch.logsumexp(-F.softplus(-z), dim=0) - log_k
        log_q = torch.logsumexp(-F.softplus(z), dim=0) - log_k
        return log_p - log_q


class PixelBlend(nn.Module):
    """An HTNet (or ensemble) whose first `n_aus` probabilities are blended with a per-AU logistic regression on the
    picture's standardised pixels: p = (1 - weight) p_htnet + weight p_pixels. Forward returns the logit of p, so the
    runner's one sigmoid gives it; the outputs after the AUs (emotion classes) are the network's, untouched.

    The regression reads the picture as the training baseline does: (H, W, C) order, values in [0, 1], minus `mean`,
    over `scale`; an AU whose regression saw one class only has a constant probability (`const`, NaN elsewhere)."""

    def __init__(self, net: HTNet | HTNetEnsemble, n_aus: int, weight: float) -> None:
        super().__init__()
        if not 0.0 < weight <= 1.0:
            raise ValueError(f"blend weight must be in (0, 1], got {weight}")
        cfg = net.config
        n_pix = cfg.image_size * cfg.image_size * cfg.channels
        if not 1 <= n_aus <= cfg.num_classes:
            raise ValueError(f"n_aus must be 1..{cfg.num_classes}, got {n_aus}")
        self.net, self.config, self.n_aus, self.weight = net, cfg, n_aus, float(weight)
        self.linear = nn.Linear(n_pix, n_aus)
        self.register_buffer("mean", torch.zeros(n_pix))
        self.register_buffer("scale", torch.ones(n_pix))
        self.register_buffer("const", torch.full((n_aus,), float("nan")))

    def pixel_proba(self, x: Tensor) -> Tensor:
        """The regression's probability per AU, (B, n_aus), for model input x (B, C, S, S) in [0, 1]."""
        u = (x.permute(0, 2, 3, 1).reshape(len(x), -1) - self.mean) / self.scale
        p = torch.sigmoid(self.linear(u))
        return torch.where(torch.isnan(self.const), p, self.const.to(p.dtype))

    def forward(self, x: Tensor) -> Tensor:
        z = self.net(x)
        k = self.n_aus
        p = (1.0 - self.weight) * torch.sigmoid(z[:, :k].float()) + self.weight * self.pixel_proba(x.float())
        p = p.clamp(1e-7, 1 - 1e-7)
        out = torch.cat([torch.log(p) - torch.log1p(-p), z[:, k:].float()], dim=1)
        assert out.shape == z.shape
        return out.to(z.dtype)
