"""The one exception type for problems the user can fix (bad config, missing data, over budget)."""


class UserError(Exception):
    """A bad input: the message names the value, what was expected and how to fix it.

    `python train.py` prints it as one line and exits non-zero; in a sweep the trial fails
    with this message as its reason.
    """
