"""The one exception type lipar raises for bad input.

Every message names the problem and the fix, so hosts (ComfyUI, the CLI) can show
it to a user as is.
"""


class LiparError(ValueError):
    """Bad input to lipar: wrong shape, wrong model, out-of-range option, NaN, ..."""
