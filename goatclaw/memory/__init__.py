"""Semantic memory: past runs, failures and their fixes, searchable by meaning.

Memories live in the store file (a ``memories`` table and a sqlite-vec ``vec0`` table of
their vectors); :mod:`goatclaw.memory.embedders` turns text into vectors,
:mod:`goatclaw.memory.store` keeps and searches them, :mod:`goatclaw.memory.learn`
remembers runs, failures and fixes and explains failures with them. Nothing here is
imported by ``import goatclaw``: the store opens it when memory is used.
"""
