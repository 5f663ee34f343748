"""What the review tiers of an `.eaf` are called and what they may hold (shared by the EAF writer and the importer).

Per face (and per overflow lane, like every tool tier) the EAF carries two tiers for the coder:

- `review` (linguistic type `review`, controlled vocabulary `review-decisions`): one annotation per reported window,
  `unreviewed` until the coder picks `confirmed` (the window is a real expression and the AUs are right), `corrected`
  (a real expression, but the coder changed its AUs and/or its onset/offset) or `rejected` (not an expression).
- `AUs (coder)` (free text): one annotation per window, prefilled with the tool's code; the coder types the FACS code
  they see in SAMM notation (`4+7`, `L12`, `12B`), moves its onset/offset if the tool's are off, and adds an
  annotation where the tool missed an expression.
"""

from __future__ import annotations

REVIEW_TIER = "review"
CODER_TIER = "AUs (coder)"
REVIEW_LINGTYPE = "review"
REVIEW_CV = "review-decisions"
UNREVIEWED, CONFIRMED, CORRECTED, REJECTED = "unreviewed", "confirmed", "corrected", "rejected"
ADDED = "added"  # not in the vocabulary: the decision of a window only the coder marked (the tool missed it)
DECISIONS: tuple[tuple[str, str], ...] = (
    (UNREVIEWED, "not looked at yet (the default)"),
    (CONFIRMED, "a real expression; the tool's window and AUs are right"),
    (CORRECTED, "a real expression; the coder changed its AUs and/or onset/offset on the 'AUs (coder)' tier"),
    (REJECTED, "not an expression (false positive)"),
)
DECISION_VALUES: tuple[str, ...] = tuple(d for d, _ in DECISIONS)
NO_AU_WORDS = frozenset({"", "-", "none", "neutral", "0"})  # a coder code meaning "no action unit"
