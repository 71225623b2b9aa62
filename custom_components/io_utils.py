"""Atomic writes: a crash or a full disk never leaves a half-written output behind."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from custom_components.data.errors import DatasetError, OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds. A failure to
    write (permissions, a full disk) is an OutputError naming `path`; the temporary file is removed."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + "".join(path.suffixes), dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"{path}: cannot be written ({e.strerror or e})") from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_save_nifti(image, path: str | os.PathLike) -> None:
    """Save a nibabel image atomically (the temp name keeps the `.nii.gz` ending so nibabel compresses)."""
    import nibabel as nib

    with atomic_path(path) as tmp:
        nib.save(image, tmp)


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint


def load_weights(path: str | os.PathLike):
    """`torch.load(path, weights_only=True)`: tensors and plain containers only, so a file that would run code
    when unpickled is refused. Any file that is not such a checkpoint is a DatasetError naming it."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise DatasetError(f"{path}: refused: not a weights-only checkpoint (it holds pickled objects other than "
                           f"tensors, which could run code: {str(e).splitlines()[-1][:200]})") from e
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise DatasetError(f"{path}: cannot be read as a PyTorch checkpoint ({str(e).splitlines()[0][:200]})") from e


def load_matching_state(module, state, path: str | os.PathLike) -> None:
    """`module.load_state_dict(state, strict=True)`, a mismatch (weights of another network or plan) being a
    DatasetError naming the file."""
    import torch

    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DatasetError(f"{path}: not a state_dict (a mapping of parameter names to tensors)")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise DatasetError(f"{path}: these weights do not fit the bundle's network ({str(e).splitlines()[0][:300]})") from e
