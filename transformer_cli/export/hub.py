"""`tfx export CHECKPOINT OUT_DIR --to huggingface --push-to-hub REPO`: the export, uploaded.

`check` runs before anything is exported, so that what can be known in advance fails in
one line with nothing written: a --to other than huggingface, a malformed repo id, and
HF_HUB_OFFLINE, which forbids any network call. `push` then creates the model repo if it
is missing and uploads OUT_DIR with huggingface_hub (`HfApi().create_repo`, `upload_folder`),
as the login of `hf auth login` or HF_TOKEN. Whatever stops the upload (no network, no or a
wrong token, a repo that is not the user's) is one line, and OUT_DIR stays exported.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from transformer_cli.core.errors import ConfigError, HubError

TRUE_VALUES = {"1", "ON", "YES", "TRUE"}  # how huggingface_hub reads a boolean environment variable


def check(to: str, repo: str) -> None:
    """Refuse, before any export or network call, a push that cannot happen."""
    if to != "huggingface":
        raise ConfigError(f"--push-to-hub uploads a huggingface export, not --to {to}")
    refuse_offline()
    hub = require_hub()
    try:
        hub.utils.validate_repo_id(repo)
    except ValueError as e:  # HFValidationError
        raise ConfigError(f"--push-to-hub {repo}: {e}") from None


def refuse_offline() -> None:
    """A one-line error if HF_HUB_OFFLINE is set (read now, not when huggingface_hub loaded)."""
    value = os.environ.get("HF_HUB_OFFLINE", "")
    if value.upper() in TRUE_VALUES:
        raise HubError(
            f"--push-to-hub: HF_HUB_OFFLINE={value} forbids network calls; "
            "unset it to upload, or export without --push-to-hub"
        )


def require_hub() -> Any:
    try:
        import huggingface_hub
        import huggingface_hub.utils
    except ImportError:
        raise HubError("--push-to-hub needs huggingface_hub: pip install huggingface_hub") from None
    return huggingface_hub


def push(out: Path, repo: str, checkpoint: str | Path) -> str:
    """Upload the export `out` to the Hub model repo `repo` (created if missing); its URL."""
    refuse_offline()
    hub = require_hub()
    try:
        api = hub.HfApi()
        url = api.create_repo(repo, repo_type="model", exist_ok=True)
        api.upload_folder(
            repo_id=repo,
            folder_path=str(out),
            repo_type="model",
            commit_message=f"tfx export of {Path(checkpoint).name}",
        )
    except upload_failures() as e:
        reason = str(e) or type(e).__name__
        raise HubError(
            f"could not push {out} to the Hub repo {repo}: {reason} "
            f"(the export is in {out}; to upload it later: hf upload {repo} {out})"
        ) from e
    return str(url)


def upload_failures() -> tuple[type[BaseException], ...]:
    """What huggingface_hub raises when an upload cannot happen (read when one is raised).

    Its own errors (HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled) are
    OSErrors (in 0.36 as in 2.4), and so are those of requests, its HTTP client before 1.0;
    a malformed repo id is a ValueError. httpx and httpx2 (its clients from 1.0 on) raise a
    failed connection as their own HTTPError, no OSError; a client not loaded raised nothing.
    """
    clients = tuple(
        sys.modules[name].HTTPError for name in ("httpx", "httpx2") if name in sys.modules
    )
    return (OSError, ValueError, *clients)
