"""The machinery the built-in selectors share: token geometry (:mod:`.geometry`), the lazy greedy engine
(:mod:`.greedy`) and regular lattices of tokens (:mod:`.lattice`). Not a plugin: nothing here is registered, and
selectors import these modules instead of one another."""
