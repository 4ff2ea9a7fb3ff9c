"""course_lib: the small, tested package behind *Diffusion Models from Scratch*.

One convention everywhere (see ``COURSE_DESIGN.md``):

* integer timesteps ``t`` in ``0 .. T-1``; ``t = 0`` is the least noisy step;
* images live in ``[-1, 1]`` with shape ``(B, C, H, W)``;
* randomness is passed in explicitly (``generator=`` or ``noise=``).

Import the modules you need, e.g. ``from course_lib import schedules, samplers``.
"""

__version__ = "0.1.0"
