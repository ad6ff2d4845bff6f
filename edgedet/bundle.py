"""Bundles: a whole model directory in one file, for shipping from a workstation to a device.

A bundle is a zip archive (stored, not compressed: the models are already dense) of the
artifact directories under an export root, plus ``bundle.json`` listing every file with its
sha256. Unpacking checks each file against that index *and* each artifact against its manifest,
refuses paths that would escape the destination, and publishes the result atomically: an
interrupted unpack never leaves a directory that later looks valid.

    python -m edgedet.bundle pack exports/ models.edgedet       # on the workstation
    python -m edgedet.bundle unpack models.edgedet ~/models     # on the device (or let Detector do it)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from edgedet._atomic import atomic_writer
from edgedet.hub import sha256_file
from edgedet.manifest import MANIFEST_NAME, Manifest, ManifestError

log = logging.getLogger(__name__)

INDEX_NAME = "bundle.json"
BUNDLE_VERSION = 1
SUFFIX = ".edgedet"


class BundleError(ValueError):
    """A bundle that cannot be made or trusted; the message says what is wrong and what to do."""


def _artifact_dirs(root: Path) -> list[Path]:
    dirs = []
    for manifest in sorted(root.rglob(MANIFEST_NAME)):
        relative = manifest.parent.relative_to(root)
        if any(p.startswith(".") or p.endswith(".failed") for p in relative.parts):
            continue  # the converter's staging and failed builds are never shipped
        dirs.append(manifest.parent)
    return dirs


def pack(models_dir: str | Path, bundle_path: str | Path) -> Path:
    """Pack every verified artifact under ``models_dir`` into ``bundle_path`` (written atomically)."""
    root = Path(models_dir)
    artifacts = _artifact_dirs(root)
    if not artifacts:
        raise BundleError(f"no artifacts under {root} (looked for */{MANIFEST_NAME}); export some with "
                          "edgedet-convert first")
    files: dict[str, str] = {}
    for directory in artifacts:
        manifest = Manifest.load(directory)
        manifest.verify_files(directory)  # never ship a file that is not the exported one
        for name in [*manifest.files, MANIFEST_NAME]:
            arcname = (directory / name).relative_to(root).as_posix()
            files[arcname] = sha256_file(directory / name)
    index = {"bundle_version": BUNDLE_VERSION, "files": files}
    with atomic_writer(bundle_path, "wb") as handle:
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED) as archive:
            archive.writestr(INDEX_NAME, json.dumps(index, indent=1, sort_keys=True))
            for arcname in files:
                archive.write(root / arcname, arcname)
    log.info("packed %d artifacts (%d files) into %s", len(artifacts), len(files), bundle_path)
    return Path(bundle_path)


def _read_index(archive: zipfile.ZipFile, where: str) -> dict[str, str]:
    try:
        index = json.loads(archive.read(INDEX_NAME))
    except KeyError:
        raise BundleError(f"{where} has no {INDEX_NAME}: not an edgedet bundle (make one with "
                          "python -m edgedet.bundle pack)") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{where}: {INDEX_NAME} is damaged ({exc}); copy the bundle again") from exc
    if index.get("bundle_version") != BUNDLE_VERSION or not isinstance(index.get("files"), dict):
        raise BundleError(f"{where}: bundle version {index.get('bundle_version')!r} is not supported here "
                          f"(this edgedet reads {BUNDLE_VERSION}); upgrade edgedet or re-pack")
    names = set(archive.namelist()) - {INDEX_NAME}
    if names != set(index["files"]):
        raise BundleError(f"{where}: the archive's files do not match its index "
                          f"(extra: {sorted(names - set(index['files']))[:5]}, "
                          f"missing: {sorted(set(index['files']) - names)[:5]}); copy the bundle again")
    for name in index["files"]:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts or "\\" in name:
            raise BundleError(f"{where}: refusing the path {name!r}, which would land outside the destination")
    return index["files"]


def unpack(bundle_path: str | Path, destination: str | Path) -> Path:
    """Unpack ``bundle_path`` into ``destination`` (created; must not exist yet), checking every hash.

    Raises :class:`BundleError` for a damaged, truncated or tampered bundle; nothing is left at
    ``destination`` then.
    """
    bundle_path, destination = Path(bundle_path), Path(destination)
    if destination.exists():
        raise BundleError(f"{destination} already exists; unpack into a new directory")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.unpack-", dir=destination.parent))
    try:
        try:
            archive = zipfile.ZipFile(bundle_path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise BundleError(f"{bundle_path} is not a readable bundle ({exc}); it is truncated or damaged: "
                              "copy it again") from exc
        with archive:
            files = _read_index(archive, str(bundle_path))
            for name, expected in files.items():
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                try:
                    with archive.open(name) as src, open(target, "wb") as dst:
                        for chunk in iter(lambda: src.read(1 << 20), b""):
                            digest.update(chunk)
                            dst.write(chunk)
                except (zipfile.BadZipFile, OSError, EOFError) as exc:
                    raise BundleError(f"{bundle_path}: cannot read {name} ({exc}); copy the bundle again") from exc
                if digest.hexdigest() != expected:
                    raise BundleError(f"{bundle_path}: {name} has sha256 {digest.hexdigest()}, the index says "
                                      f"{expected}; the bundle is damaged: copy it again")
        for directory in _artifact_dirs(staging):
            try:
                Manifest.load(directory).verify_files(directory)
            except ManifestError as exc:
                raise BundleError(f"{bundle_path}: {exc}") from exc
        os.replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("unpacked %s into %s", bundle_path, destination)
    return destination


def unpack_cached(bundle_path: str | Path, cache_root: str | Path) -> Path:
    """Unpack into ``cache_root/<bundle sha256 prefix>`` once; later calls reuse that directory."""
    bundle_path = Path(bundle_path)
    target = Path(cache_root) / sha256_file(bundle_path)[:16]
    if target.is_dir():  # only ever published complete and verified by unpack()
        return target
    return unpack(bundle_path, target)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgedet.bundle",
        description="Pack exported models into one file for a device, or unpack one with every hash checked.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="pack an export directory (edgedet-convert --out DIR) into a bundle")
    p.add_argument("models_dir")
    p.add_argument("bundle", help=f"output file, e.g. models{SUFFIX}")
    u = sub.add_parser("unpack", help="unpack and verify a bundle into a new directory")
    u.add_argument("bundle")
    u.add_argument("destination")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "pack":
            pack(args.models_dir, args.bundle)
        else:
            unpack(args.bundle, args.destination)
    except (BundleError, ManifestError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
