"""The one error an import reports: a sentence for the operator, no traceback."""


class ImportFailure(Exception):
    """Why the file cannot be imported; `__main__` prints it and exits 1."""
