"""What the selectors that prune inside the language model (fastv, dart) share: no scores, the "in_llm" stage, and
K, the first layer that sees only the kept tokens, from their config's ``layer``."""

from __future__ import annotations

from zoprune import Selector


class InLLMSelector(Selector):
    """A selector that runs on what enters decoder layer K-1 (``config.layer`` = K) and ranks by its own signal."""

    needs_scores = False
    stage = "in_llm"

    @property
    def llm_layer(self) -> int:
        return self.config.layer
