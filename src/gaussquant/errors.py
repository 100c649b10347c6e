"""User-facing errors: the CLI prints these as one line (no traceback) and exits with code 2."""


class GaussquantError(Exception):
    """A problem the user can fix (bad parameter, missing file, missing weights).

    The message names the bad input and how to fix it.
    """


class ConfigError(GaussquantError):
    """params.yaml is invalid: unknown key, wrong type or impossible value."""


class MissingWeightsError(GaussquantError):
    """Metric network weights are missing or corrupt; run `gaussquant fetch-weights`."""
