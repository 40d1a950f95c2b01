"""Token lifecycle: kill switches and revocation, enforced from an in-memory view.

``decision`` is pure (an immutable snapshot and the question "may this exchange go on?");
``view`` keeps one snapshot per broker process current from the database (``sts.store.lifecycle``)
through PostgreSQL ``LISTEN/NOTIFY`` and a polling fallback, and swaps it whole.
"""

from sts.lifecycle.decision import EMPTY, KillSwitch, LifecycleSnapshot, Refusal

__all__ = ["EMPTY", "KillSwitch", "LifecycleSnapshot", "Refusal"]
