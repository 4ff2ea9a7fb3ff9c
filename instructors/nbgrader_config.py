# nbgrader configuration for a course built from this repository. Copy it into your nbgrader course
# directory (the one that holds source/, release/, submitted/); see README.md, "Grading with nbgrader".
# tests/test_nbgrader.py autogrades every lesson with this very file (its command-line options override
# the timeout below).
import time
from queue import Empty

from jupyter_client.channels import AsyncZMQSocketChannel

c = get_config()  # noqa: F821 (nbgrader defines it when it reads this file)
c.CourseDirectory.course_id = "diffusion-from-scratch"
c.Execute.timeout = 900  # per cell; nbgrader's default of 30 s is too short for sampling cells

# A missed wake-up (nbgrader 0.9.6, nbclient 0.11, jupyter_client 8.10, pyzmq 27.3): nbclient waits for a
# cell's reply with an asyncio poll on a zmq socket, and that poll can stay asleep while the reply is already
# on the socket. The run then sits idle for the whole cell timeout above and carries on (nothing is lost, the
# cell is not marked as timed out). Seen in up to 1 autograde run in 5, at the lessons' widget cells. Waiting
# in slices of at most a second bounds it to a second: a slice that times out ends with a zmq_poll of timeout
# 0, which finds the reply. nbgrader may read this file more than once, so always wrap the original method.
_unsliced = AsyncZMQSocketChannel._get_msg_unsliced = getattr(
    AsyncZMQSocketChannel, "_get_msg_unsliced", AsyncZMQSocketChannel.get_msg)


async def _get_msg_in_slices(self, timeout=None):
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return await _unsliced(self, timeout=1.0 if left is None else min(left, 1.0))
        except Empty:
            if left is not None and left <= 1.0:
                raise


AsyncZMQSocketChannel.get_msg = _get_msg_in_slices
