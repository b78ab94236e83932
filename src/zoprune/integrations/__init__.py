"""Integrations with other tools, one module each. Each imports its tool only inside itself: ``import zoprune``
never needs them, and a missing one is named with the extra that installs it."""
