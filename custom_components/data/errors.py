"""The error raised for bad user input: it always names the file at fault and what is wrong with it."""


class DatasetError(ValueError):
    """Bad input data or configuration, as opposed to a bug: the message names the file and the problem."""
