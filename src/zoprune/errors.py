"""Errors zoprune raises on bad input: each names the problem and what would be accepted instead."""


class ZopruneError(Exception):
    """Base class of every error zoprune raises on purpose."""


class ConfigError(ZopruneError, ValueError):
    """A pipeline or component configuration is malformed: the message names the key, the value and what is allowed."""


class PluginError(ZopruneError, LookupError):
    """A component name is unknown, or a plugin failed to load."""


class UnsupportedModelError(ZopruneError, TypeError):
    """No registered adapter knows this model (or the named adapter does not fit it)."""


class InputError(ZopruneError, ValueError):
    """The inputs given to a pruned model cannot be pruned as asked (no images, mismatched placeholders, ...)."""


class NumericalError(ZopruneError, FloatingPointError):
    """Non-finite values (NaN, inf) where tokens are scored or selected: the message names the image and the
    component that produced them (half-precision overflow is the usual cause)."""
