"""Built-in task plugins, one module each, written against :mod:`goatclaw.plugin` only."""
