"""Package a planned, trained bundle as a self-contained MONAI Bundle folder and zip.

    python -m scripts.package --bundle_root W --output_dir P [--name NAME]
    python -m scripts.package verify --package_dir P/NAME      (before loading a bundle you were given)

Writes `P/NAME/` (NAME defaults to W's folder name) and `P/NAME.zip`. The folder holds the bundle's configs,
docs, LICENSE and weights (`models/model.pt`, `models/model.ts` and fold models where present; no training
checkpoints or logs), `large_files.yml` listing the weights with their SHA-256, and a copy of the
`custom_components` package, so that the bundle runs with only MONAI and its listed requirements installed:
MONAI Label puts the bundle root on `sys.path`; elsewhere, run with `PYTHONPATH=P/NAME`. Nothing existing is
overwritten.

A bundle's configs run Python expressions and its `custom_components` is imported, so a bundle from elsewhere is
code. `checksums.sha256` (in `sha256sum` format, so `sha256sum -c` checks it too) lists the SHA-256 of every file
of the package; `verify` reports every file changed, missing or added since packaging, and exits 1 if any.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import fire
import yaml

from custom_components.data.errors import DatasetError
from custom_components.io_utils import atomic_path, atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "custom_components"
BUNDLE_PARTS = ("configs", "docs", "LICENSE")
CHECKSUMS = "checksums.sha256"


def weight_files(root: Path) -> list[Path]:
    """The inference weights: model.pt, model.ts and every fold's model.pt (relative to the bundle root)."""
    models = root / "models"
    found = [models / n for n in ("model.pt", "model.ts") if (models / n).is_file()]
    found += sorted(models.glob("fold_*/model.pt")) + sorted(models.glob("stage1/fold_*/model.pt"))
    return [p.relative_to(root) for p in found]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def large_files(root: Path, weights: list[Path]) -> str:
    """The model-zoo `large_files.yml`: where each weight file goes and its hash. The url is left for whoever
    hosts the weights to fill in (nothing here is uploaded)."""
    entries = [{"path": str(w), "url": "", "hash_val": sha256(root / w), "hash_type": "sha256"} for w in weights]
    return ("# Weights of this bundle; fill in `url` where they are hosted. Checked with the hash on download.\n"
            + yaml.safe_dump({"large_files": entries}, sort_keys=False))


def _package_files(folder: Path) -> list[Path]:
    """Every file a package holds, but the checksum list and the bytecode Python writes beside imported code."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS
                  and "__pycache__" not in p.relative_to(folder).parts)


def write_checksums(folder: Path) -> None:
    lines = [f"{sha256(p)}  {p.relative_to(folder).as_posix()}" for p in _package_files(folder)]
    atomic_write_text(folder / CHECKSUMS, "\n".join(lines) + "\n")


def verify_package(folder: str | os.PathLike) -> list[str]:
    """Every file of a package that differs from its checksum list, is missing, or is not listed; empty if none."""
    folder = Path(folder)
    listing = folder / CHECKSUMS
    if not listing.is_file():
        raise DatasetError(f"{listing}: missing; this folder was not written by scripts.package, or lost its list")
    expected = {}
    for n, line in enumerate(listing.read_text().splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise DatasetError(f"{listing}: line {n} is not '<sha256>  <path>'")
        expected[name] = digest
    problems = []
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif sha256(path) != digest:
            problems.append(f"{path}: changed since packaging (SHA-256 differs)")
    problems += [f"{p}: not in {CHECKSUMS} (added after packaging)" for p in _package_files(folder)
                 if p.relative_to(folder).as_posix() not in expected]
    return problems


def copy_package(dest: Path) -> None:
    """`custom_components` as Python sources only (its template config fragments are already flattened into the
    planned configs)."""
    shutil.copytree(PACKAGE, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "configs"))


def package(bundle_root: str | os.PathLike, output_dir: str | os.PathLike, name: str | None = None) -> tuple[Path, Path]:
    root = Path(bundle_root).resolve()
    if not (root / "configs" / "metadata.json").is_file() or not (root / "configs" / "inference.yaml").is_file():
        raise DatasetError(f"{root}: not a planned bundle (configs/metadata.json and configs/inference.yaml are needed)")
    weights = weight_files(root)
    if Path("models/model.pt") not in weights:
        raise DatasetError(f"{root}/models/model.pt: missing; train the bundle before packaging it")
    name = name or root.name
    out = Path(output_dir)
    folder, archive = out / name, out / f"{name}.zip"
    for path in (folder, archive):
        if path.exists():
            raise DatasetError(f"{path} exists: refusing to overwrite it (remove it or choose another --output_dir)")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))  # moved into place only when complete
    staging = work / name
    try:
        staging.mkdir()
        for part in BUNDLE_PARTS:
            src = root / part
            if src.is_dir():
                shutil.copytree(src, staging / part, ignore=shutil.ignore_patterns("__pycache__"))
            elif src.is_file():
                shutil.copy2(src, staging / part)
        for w in weights:
            (staging / w).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / w, staging / w)
        copy_package(staging / "custom_components")
        atomic_write_text(staging / "large_files.yml", large_files(root, weights))
        write_checksums(staging)
        with atomic_path(archive) as tmp:  # the temporary name ends in .zip, as make_archive writes it
            shutil.make_archive(str(Path(tmp).with_suffix("")), "zip", root_dir=work, base_dir=name)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder, archive


def main(bundle_root: str, output_dir: str, name: str | None = None) -> None:
    """Write the self-contained bundle folder and its zip."""
    try:
        folder, archive = package(bundle_root, output_dir, name)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"bundle: {folder}\nzip: {archive}\nrun it with PYTHONPATH={folder} (MONAI Label adds the bundle root itself)")


def verify(package_dir: str) -> None:
    """Check every file of a packaged bundle against its checksums.sha256; exit 1 naming each one that differs."""
    try:
        problems = verify_package(package_dir)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if problems:
        print("\n".join(f"error: {p}" for p in problems), file=sys.stderr)
        sys.exit(1)
    print(f"{package_dir}: every file matches {CHECKSUMS}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "verify":
        fire.Fire({"verify": verify})
    else:
        fire.Fire(main)
