"""Zero-trust runs: permissions, secret redaction, untrusted-data flows (and the audit chain).

* :mod:`goatclaw.security.permissions`: what a task is granted (:class:`Grant`), built
  from the project file, the pipeline and the task, deny by default; the checks that
  built-in tasks and plugins call through their ``TaskContext``.
* :mod:`goatclaw.security.secrets`: the :class:`Redactor` that masks declared secret
  values (and their base64, URL, hex and JSON-escaped forms) in everything written.
* :mod:`goatclaw.security.taint`: which untrusted outputs (``llm``, ``http``) flow into
  which sinks (``shell`` arguments, ``file.write`` paths, ``python`` calls, ``http`` URLs).

This room imports nothing of goatclaw but :mod:`goatclaw.errors`.
"""

from goatclaw.security.permissions import Grant
from goatclaw.security.secrets import Redactor

__all__ = ["Grant", "Redactor"]
