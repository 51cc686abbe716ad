"""goatclaw-example: a small, real goatclaw plugin package.

Tasks ``text.stats`` and ``slugify``, the validator ``example.slug`` and the hook
``example.timing``, published through entry points (see ``pyproject.toml``).
"""

__version__ = "0.1.0"
