"""Exercise checks: what the check cell after each exercise calls.

A check *tests behaviour* (moments, shapes, known values, equivalences), never source text. On
success it prints a one-line pass message; on failure it raises :class:`ExerciseError` whose message
says what was expected, what came back, and which equation to revisit. The lesson-specific checks
live in ``lesson01`` ... ``lesson04``; the helpers below are shared by them.
"""

import torch


class ExerciseError(AssertionError):
    """Raised by a check that failed; the message is the hint."""


def passed(exercise, message=""):
    """Print the pass line for ``exercise`` (e.g. "1.2")."""
    print(f"✅ Exercise {exercise} passed{': ' + message if message else '.'}")


def fail(exercise, what, hint):
    """Raise an :class:`ExerciseError` for ``exercise`` with what went wrong and a hint."""
    raise ExerciseError(f"❌ Exercise {exercise}: {what}\n   Hint: {hint}")


def expect_tensor(exercise, value, shape, name="your result"):
    """Fail unless ``value`` is a tensor of ``shape`` with only finite entries."""
    if not isinstance(value, torch.Tensor):
        fail(exercise, f"{name} should be a torch.Tensor, got {type(value).__name__}",
             "return a tensor, e.g. built with torch operations on the inputs")
    if tuple(value.shape) != tuple(shape):
        fail(exercise, f"{name} has shape {tuple(value.shape)}, expected {tuple(shape)}",
             "check your broadcasting: per-timestep numbers need shape (B, 1, 1, 1) to scale (B, C, H, W) images")
    if not torch.isfinite(value).all():
        fail(exercise, f"{name} contains NaN or inf", "look for a division by zero or a sqrt of a negative number")


def expect_close(exercise, value, expected, hint, name="your result", atol=1e-5, rtol=1e-4):
    """Fail unless ``value`` is close to ``expected`` (tensors or numbers); the message shows both."""
    value_t, expected_t = torch.as_tensor(value, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64)
    if value_t.shape != expected_t.shape:
        fail(exercise, f"{name} has shape {tuple(value_t.shape)}, expected {tuple(expected_t.shape)}", hint)
    if not torch.allclose(value_t, expected_t, atol=atol, rtol=rtol):
        err = (value_t - expected_t).abs()
        k = int(err.flatten().argmax())
        fail(exercise, f"{name} is off: at index {k} expected {expected_t.flatten()[k].item():.6g}, "
                       f"got {value_t.flatten()[k].item():.6g} (largest error {err.max().item():.3g})", hint)


def _close(a, b, atol=1e-4, rtol=1e-4):
    return (isinstance(a, torch.Tensor) and a.shape == b.shape and bool(torch.isfinite(a).all())
            and torch.allclose(a.detach().double(), b.detach().double(), atol=atol, rtol=rtol))


def diagnose(ex, value, expected, mistakes, name, hint):
    """Pass silently if ``value`` matches ``expected``; else fail, naming the first matching mistake.

    ``mistakes``: ``(wrong_value, hint)`` pairs, the results of plausible wrong implementations; a value that
    matches one of them gets that mistake's hint, any other wrong value gets ``hint`` and the largest error."""
    if _close(value, expected):
        return
    for wrong, mistake_hint in mistakes:
        if _close(value, wrong):
            fail(ex, f"{name} is not right: it matches a common mistake", mistake_hint)
    err = (value.detach().double() - expected.double()).abs()
    k = int(err.flatten().nan_to_num(float("inf")).argmax())
    fail(ex, f"{name} is off: at index {k} expected {expected.flatten()[k].item():.6g}, "
             f"got {value.detach().flatten()[k].item():.6g}", hint)


def _device_error(error):
    """Whether ``error`` says that tensors on two devices met (not that a meta tensor has no values to read)."""
    message = str(error)
    return "device" in message and "meta tensors" not in message and "'Meta' backend" not in message


def expect_on_meta(exercise, call, name, hint):
    """The device probe: ``call()`` runs the learner's function with its tensor inputs on the meta device, which
    stands in for a GPU here (its tensors have shapes and dtypes but no values, so torch checks every operation's
    devices at no cost). Fail if the function mixed in a tensor it made on the CPU (torch raises) or returned a
    tensor that is not on meta. Run it after the numeric checks, so that a wrong answer gets its own hint first.
    A function that needs values (``.item()``, ``if (x > 0).any()``) cannot run on meta: the probe then says
    nothing, as a right answer may do that."""
    try:
        out = call()
    except RuntimeError as error:  # NotImplementedError ("no 'Meta' kernel") is one too
        if not _device_error(error):
            return
        fail(exercise, f"with its inputs on another device than the CPU (the meta device, standing in for a GPU), "
                       f"{name} raised: {str(error).splitlines()[0]}", hint)
    if isinstance(out, torch.Tensor) and out.device.type != "meta":
        fail(exercise, f"with its inputs on another device than the CPU (the meta device, standing in for a GPU), "
                       f"{name} returned a tensor on {out.device.type}", hint)
