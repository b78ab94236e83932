"""Speed measurements: ``zoprune bench`` (see :mod:`zoprune.bench.speed`)."""
