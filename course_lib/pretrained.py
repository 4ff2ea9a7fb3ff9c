"""Small checkpoints shipped inside the package, so that a learner on a CPU sees good samples at once.

``load(name)`` checks the file's sha256 against ``manifest.json`` before reading it with
``torch.load(weights_only=True)`` (which refuses to run pickled code), and rebuilds the network.
Each entry of the manifest records the command that made it, its data, steps, time and hardware.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

FOLDER = Path(__file__).parent / "pretrained"
MANIFEST = "manifest.json"


@dataclass
class Pretrained:
    name: str
    model: torch.nn.Module  # in eval mode, float32, on the CPU (move it with .to(device))
    schedule: object  # the Schedule it was trained with (None for classifiers)
    image_shape: tuple  # (C, H, W)
    null_class: object  # the "no label" class for classifier-free guidance, or None
    info: dict  # the manifest entry: recipe, data, steps, seconds, hardware, ...


def available(folder=None):
    """Names of the models listed in the manifest."""
    return sorted(_manifest(Path(folder or FOLDER)))


def load(name, folder=None, device="cpu"):
    """Load a shipped model by name; see :func:`available` for the names."""
    folder = Path(folder or FOLDER)
    manifest = _manifest(folder)
    if name not in manifest:
        raise ValueError(f"unknown pretrained model {name!r}; available: {', '.join(sorted(manifest)) or 'none'}")
    entry = manifest[name]
    path = folder / entry["file"]
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} is missing (expected sha256 {entry['sha256']}); "
                                f"reinstall course_lib or retrain it with `{entry.get('recipe', '')}`")
    digest = sha256(path)
    if digest != entry["sha256"]:
        raise ValueError(f"checkpoint {path} is corrupt or was modified: its sha256 is {digest}, "
                         f"the manifest expects {entry['sha256']}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = _build(entry)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model = model.to(device).eval().requires_grad_(False)
    schedule = None
    if "schedule" in entry:
        from .schedules import make_schedule

        schedule = make_schedule(entry["schedule"]["name"], entry["schedule"]["T"])
    return Pretrained(name, model, schedule, tuple(entry["image_shape"]), entry.get("null_class"), entry)


def save(name, model, info, folder=None):
    """Write ``model``'s weights as float16 to ``<folder>/<name>.pt`` and record them in the manifest."""
    folder = Path(folder or FOLDER)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.pt"
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    torch.save({k: v.cpu() for k, v in state.items()}, path)
    manifest = _manifest(folder) if (folder / MANIFEST).exists() else {}
    manifest[name] = {**info, "file": path.name, "sha256": sha256(path), "bytes": path.stat().st_size}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _manifest(folder):
    path = folder / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no manifest at {path}: reinstall course_lib")
    return json.loads(path.read_text())


def _build(entry):
    from .nets import Classifier, UNet

    kinds = {"unet": UNet, "classifier": Classifier}
    from .nets import NoisyClassifier

    kinds["noisy-classifier"] = NoisyClassifier
    from .latent import LatentDiffusion

    kinds["latent"] = LatentDiffusion
    if entry["kind"] not in kinds:
        raise ValueError(f"manifest names an unknown model kind {entry['kind']!r}; known: {', '.join(kinds)}")
    return kinds[entry["kind"]](**entry["config"])
