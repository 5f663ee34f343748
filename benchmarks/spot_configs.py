"""Named spotter configurations the real-data spotting benchmarks compare (overrides of au_annotate.spot.SpotConfig).

"default" is the product's default; "old-default" is the spotter as it was before round 9 of docs/spotting.md (no
landmark context, the go-and-return test and the whole-face spread rule on, the rigid-fit head test on every window).
"""

from __future__ import annotations

from typing import Any

CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "no-landmarks": {"landmarks": "off"},
    "held": {"held": "on"},
    "return-test": {"return_ratio": 0.6},
    "spread-rule": {"spread_ratio": 0.5},
    "old-default": {"landmarks": "off", "return_ratio": 0.6, "spread_ratio": 0.5},
}
