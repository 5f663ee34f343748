"""HTNet (NesT-style hierarchical transformer) for multi-label AU logits from 28x28 flow pictures; no I/O here.

The module layout reproduces the seed checkpoint's state-dict names and shapes exactly (DESIGN.md "Model"), so its
published plain state dict loads with ``strict=True``. Unlike the seed, ``forward`` returns logits: apply the sigmoid
once, outside (the seed's sigmoid sat inside the model and its evaluation added a second one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class HTNetConfig:
    """Architecture hyper-parameters; the defaults are the seed's configuration (582,433 parameters)."""

    image_size: int = 28
    patch_size: int = 7
    dim: int = 64
    heads: int = 4
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
        if fmap % blocks:
            raise ValueError(
                f"the {fmap}x{fmap} patch map cannot be cut into {blocks}x{blocks} blocks "
                f"(num_hierarchies {self.num_hierarchies})"
            )
        # every level must keep at least one token per block after the stride-2 poolings
        if fmap // (2 ** (self.num_hierarchies - 1)) < 1:
            raise ValueError(f"num_hierarchies {self.num_hierarchies} too deep for a {fmap}x{fmap} patch map")
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
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown HTNet config key(s): {', '.join(map(str, unknown))} (known: {', '.join(sorted(known))})")
        return cls(**d)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of (B, C, H, W): biased variance, eps 1e-5, gain g and bias b of (1, C, 1, 1)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.b = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.g + self.b


class PreNorm(nn.Module):
    """Channel LayerNorm, then the wrapped function (the residual is added by the caller)."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = ChannelLayerNorm(dim)
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(self.norm(x))


class FeedForward(nn.Module):
    """1x1 conv C -> mult*C, GELU, dropout, 1x1 conv back to C, dropout."""

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
        return self.net(x)


class Attention(nn.Module):
    """Multi-head self-attention over the spatial positions of a (B, C, H, W) block; heads of size C / heads."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim // heads
        self.dropout = dropout
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        # (B, 3C, H, W) -> 3 x (B, heads, H*W, d): channel index = head * d + i, as the seed's 'b (h d) x y'
        qkv = self.to_qkv(x).reshape(b, 3, self.heads, self.dim_head, h * w).transpose(-1, -2)
        q, k, v = qkv.unbind(1)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return self.to_out(out)


class Transformer(nn.Module):
    """One hierarchy level: learned positional vector (seq_len) added as an (h, w) map, then depth x (attn, ff)."""

    def __init__(self, dim: int, seq_len: int, depth: int, heads: int, mlp_mult: int, dropout: float) -> None:
        super().__init__()
        self.pos_emb = nn.Parameter(torch.randn(seq_len))
        self.layers = nn.ModuleList(
            nn.ModuleList([PreNorm(dim, Attention(dim, heads, dropout)), PreNorm(dim, FeedForward(dim, mlp_mult, dropout))])
            for _ in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x = x + self.pos_emb[: h * w].reshape(1, 1, h, w)
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return x


class PatchRearrange(nn.Module):
    """(B, c, H*p, W*p) -> (B, p*p*c, H, W): each p x p patch laid out as channels in (p1 p2 c) order (seed index 0)."""

    def __init__(self, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size

    def forward(self, x: Tensor) -> Tensor:
        b, c, hh, ww = x.shape
        p = self.patch_size
        h, w = hh // p, ww // p
        return x.reshape(b, c, h, p, w, p).permute(0, 3, 5, 1, 2, 4).reshape(b, p * p * c, h, w)


class SpatialMean(nn.Module):
    """(B, C, H, W) -> (B, C): mean over space (the seed's Reduce('b c h w -> b c', 'mean'))."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))


def _aggregate(dim: int, dim_out: int) -> nn.Sequential:
    """Between levels: 3x3 conv C -> 2C, channel LayerNorm, max-pool 3 / stride 2 / padding 1."""
    return nn.Sequential(nn.Conv2d(dim, dim_out, 3, padding=1), ChannelLayerNorm(dim_out), nn.MaxPool2d(3, stride=2, padding=1))


def _to_blocks(x: Tensor, n: int) -> Tensor:
    """(B, C, n*h, n*w) -> (B*n*n, C, h, w): the seed's 'b c (b1 h) (b2 w) -> (b b1 b2) c h w'."""
    if n == 1:
        return x
    b, c, hh, ww = x.shape
    h, w = hh // n, ww // n
    return x.reshape(b, c, n, h, n, w).permute(0, 2, 4, 1, 3, 5).reshape(b * n * n, c, h, w)


def _from_blocks(x: Tensor, n: int) -> Tensor:
    """Inverse of _to_blocks."""
    if n == 1:
        return x
    bnn, c, h, w = x.shape
    b = bnn // (n * n)
    return x.reshape(b, n, n, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(b, c, n * h, n * w)


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
        self.to_patch_embedding = nn.Sequential(PatchRearrange(patch_size), nn.Conv2d(channels * patch_size**2, dims[0], 1))
        self.layers = nn.ModuleList()
        for i, m in enumerate(mults):
            dim_in = dims[i]
            is_last = i == num_hierarchies - 1
            self.layers.append(
                nn.ModuleList([
                    Transformer(dim_in, seq_len, block_repeats, heads * m, mlp_mult, dropout),
                    nn.Identity() if is_last else _aggregate(dim_in, dims[i + 1]),
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
        x = self.to_patch_embedding(x)
        n_levels = len(self.layers)
        for i, (transformer, aggregate) in enumerate(self.layers):
            blocks = 2 ** (n_levels - 1 - i)
            x = _from_blocks(transformer(_to_blocks(x, blocks)), blocks)
            x = aggregate(x)
        logits = self.mlp_head(x)
        assert logits.shape == (x.shape[0], cfg.num_classes)
        return logits
