"""One switch for compute budgets.

CI sets ``COURSE_FAST=1`` to shrink training steps, data and sample counts so that the whole
course runs in minutes on two CPU cores. Learners leave it unset and get the real thing.
"""

import os

FAST = os.environ.get("COURSE_FAST", "0") not in ("", "0", "false", "False")


def pick(normal, fast):
    """Return ``fast`` when ``COURSE_FAST=1`` is set, else ``normal``.

    >>> steps = pick(2000, 50)   # 2,000 training steps for learners, 50 in CI
    """
    return fast if FAST else normal
