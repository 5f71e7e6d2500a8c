"""Exceptions the command line turns into one-line messages."""


class AffinityNetError(Exception):
    """Base class: an error the user can act on; the CLI prints it without a traceback."""


class ConfigError(AffinityNetError):
    """A configuration key, value or file is wrong."""


class DataError(AffinityNetError):
    """An input file (image, mask, annotation, list, checkpoint) is missing or malformed.

    The message always names the file.
    """

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # rebuilt from (path, problem) when a worker process sends it back
        return type(self), (self.path, self.problem)


class StageError(AffinityNetError):
    """A pipeline stage cannot run (missing inputs, not built, diverged training)."""
