"""`deepcourse push`: a run's best weights, card, recipe and figures uploaded to a Hugging Face Hub model repository.

The files are first staged in a temporary folder laid out as the repository will be (so what is uploaded is what a
test can read), then sent in one commit with `HfApi.upload_folder`. Without a token, with HF_HUB_OFFLINE set, or
when the Hub cannot be reached, the command stops with exit 2 and says what to do: nothing is half-uploaded, since a
commit is atomic on the Hub.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from deepcourse.errors import UserError
from deepcourse.results.card import run_figures, write_card
from deepcourse.rundir.layout import require_run_dir
from deepcourse.training.checkpoint import best_folder

#: files of the best weights' folder that travel with the weights (the facts and vocabularies predict needs)
BEST_FILES = ("model.safetensors", "facts.json", "facts.safetensors", "artifacts.json", "metrics.json")


def stage(run_dir: Path, folder: Path) -> list[str]:
    """Lay the repository out in `folder`: README.md (the card, written afresh), recipe.toml, summary.json, the best
    weights with their facts and artifacts (model.safetensors, ...), and the report's figures (report/*.png).
    Returns the staged files, relative to `folder`."""
    require_run_dir(run_dir)
    best = best_folder(run_dir)
    if not (best / "model.safetensors").is_file():
        raise UserError(f"push: {run_dir} has no best weights ({best / 'model.safetensors'} is missing); push a run "
                        f"that has evaluated at least once")
    copies = {"README.md": write_card(run_dir), "recipe.toml": run_dir / "recipe.toml"}
    if (run_dir / "summary.json").is_file():
        copies["summary.json"] = run_dir / "summary.json"
    copies.update({name: best / name for name in BEST_FILES if (best / name).is_file()})
    copies.update({figure.as_posix(): run_dir / figure for figure in run_figures(run_dir)})
    for name, source in copies.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, folder / name)
    return sorted(copies)


@contextlib.contextmanager
def staged(run_dir: Path) -> Iterator[tuple[Path, list[str]]]:
    """A temporary folder holding the staged repository, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="deepcourse-push-") as folder:
        files = stage(run_dir, Path(folder))
        yield Path(folder), files


def require_online() -> str:
    """The Hub token, or exit 2 saying how to log in (or that the machine is set offline)."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise UserError("push: HF_HUB_OFFLINE is set: this machine is offline for the Hub; push from a machine that "
                        "reaches huggingface.co (copy the run directory there), or unset HF_HUB_OFFLINE")
    token = get_token()
    if not token:
        raise UserError("push: no Hugging Face token: log in with `hf auth login` (or set HF_TOKEN) on a machine "
                        "that reaches huggingface.co")
    return token


def push_run(run_dir: Path, repo: str, *, private: bool = False, dry_run: bool = False) -> tuple[str, list[str]]:
    """Stage and upload `run_dir` to the model repository `repo` (created if missing) in one commit; returns the
    commit's URL and the files. `dry_run`: stage only (the URL is empty)."""
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise UserError(f"push: REPO '{repo}' is not a Hub repository id; give it as user/name (or org/name)")
    token = "" if dry_run else require_online()
    with staged(run_dir) as (folder, files):
        if dry_run:
            return "", files
        return upload(folder, repo, token, private), files


def upload(folder: Path, repo: str, token: str, private: bool) -> str:
    """Create the repository if needed, then upload the folder in one commit; HTTP and network failures exit 2."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo, folder_path=folder, repo_type="model",
                                   commit_message="Upload a deepcourse run (weights, card, recipe, figures)")
    except HfHubHTTPError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"push: the Hub refused the upload to {repo}: {first}") from None
    except Exception as exc:
        if not network_error(exc):  # versions (requests, httpx, httpx2); anything else is a bug, shown as one
            raise
        raise UserError(f"push: cannot reach the Hub ({type(exc).__name__}: {exc}); this machine may be offline: "
                        f"push from one that reaches huggingface.co") from None
    return str(getattr(commit, "commit_url", commit))


def network_error(exc: BaseException) -> bool:
    """A connection failure (no network, DNS, timeout) from whichever HTTP client huggingface_hub uses."""
    return isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "requests", "urllib3")
