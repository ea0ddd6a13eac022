"""The exception types that mean "the user's input or setup needs fixing"."""


class ConfigError(ValueError):
    """Bad input: the message names the file or setting and how to fix it.

    The command-line entry points print these as one paragraph and exit non-zero, without a
    traceback, because the fix lies with the user rather than in the code.
    """


class DownloadError(ConfigError):
    """A data set could not be downloaded, verified or extracted."""
