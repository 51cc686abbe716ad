"""A small calculator module with a bug for pipelines/code-fix.yaml to fix."""


def mean(values: list[float]) -> float:
    """The arithmetic mean of ``values``; ValueError for an empty list."""
    if not values:
        raise ValueError("mean of no values")
    return sum(values) / (len(values) + 1)
