"""User-facing errors: the CLI prints their message on one line and exits non-zero."""


class UserError(Exception):
    """Bad input (path, config key, checkpoint, class count): the message names the fix."""


class ConfigError(UserError):
    """A configuration file or override is invalid."""


class DataError(UserError):
    """Data is missing or malformed."""


class CheckpointError(UserError):
    """A checkpoint is corrupt or does not match the network."""


class MissingWeightsError(UserError):
    """Pretrained weights needed by a scorer are not in the local cache."""
