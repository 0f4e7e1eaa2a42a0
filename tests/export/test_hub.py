"""`tfx export --to huggingface --push-to-hub REPO` uploads the export directory to REPO,
and what stops it is one line: the wrong --to, a malformed repo id and HF_HUB_OFFLINE before
anything is written, a network or login failure after, with the export kept on disk.

No test reaches the network: `huggingface_hub.HfApi` is a fake that records its calls."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from helpers import assert_one_line_error, cli, trained_tiny

huggingface_hub = pytest.importorskip("huggingface_hub")
pytest.importorskip("transformers")
pytest.importorskip("google.protobuf")

REPO = "someone/tiny-tfx"


class FakeHfApi:
    """huggingface_hub.HfApi as far as tfx uses it: records each call, or raises `failure`."""

    calls: list[tuple[str, dict]] = []
    failure: tuple[str, Exception] | None = None

    def _call(self, name: str, **kwargs):
        FakeHfApi.calls.append((name, kwargs))
        if FakeHfApi.failure and FakeHfApi.failure[0] == name:
            raise FakeHfApi.failure[1]

    def create_repo(self, repo_id, **kwargs):
        self._call("create_repo", repo_id=repo_id, **kwargs)
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])  # what is there when it is uploaded
        self._call("upload_folder", files=sorted(p.name for p in folder.iterdir()), **kwargs)


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(FakeHfApi, "calls", [])
    monkeypatch.setattr(FakeHfApi, "failure", None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return FakeHfApi


def push(tmp_path, tmp_path_factory, toy_pairs, *extra: str):
    checkpoint = trained_tiny(tmp_path_factory, toy_pairs, "post-norm")
    return cli("export", checkpoint, tmp_path / "hf", "--to", "huggingface", *extra)


def test_the_export_directory_is_uploaded_to_the_repo(tmp_path, tmp_path_factory, toy_pairs, hub):
    result = push(tmp_path, tmp_path_factory, toy_pairs, "--push-to-hub", REPO)
    assert result.exit_code == 0, result.output
    (create, created), (upload, uploaded) = hub.calls
    assert (create, created) == (
        "create_repo",
        {"repo_id": REPO, "repo_type": "model", "exist_ok": True},
    )
    assert upload == "upload_folder"
    assert Path(uploaded["folder_path"]) == tmp_path / "hf"
    assert (uploaded["repo_id"], uploaded["repo_type"]) == (REPO, "model")
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(
        uploaded["files"]
    )
    assert f"pushed {tmp_path / 'hf'} to https://huggingface.co/{REPO}" in result.stderr
    card = (tmp_path / "hf" / "README.md").read_text()
    assert f'from_pretrained("{REPO}")' in card  # the README loads the model from the Hub
    assert yaml.safe_load(card.split("---")[1])["pipeline_tag"] == "translation"


def test_what_cannot_be_pushed_is_refused_before_anything_is_written(
    tmp_path, tmp_path_factory, toy_pairs, hub, monkeypatch
):
    checkpoint = trained_tiny(tmp_path_factory, toy_pairs, "post-norm")
    out = tmp_path / "out"
    ct2 = cli("export", checkpoint, out, "--to", "ctranslate2", "--push-to-hub", REPO)
    assert_one_line_error(ct2, "--push-to-hub uploads a huggingface export, not --to ctranslate2")
    malformed = push(tmp_path, tmp_path_factory, toy_pairs, "--push-to-hub", "a/b/c")
    assert_one_line_error(malformed, "--push-to-hub a/b/c: Repo id must be in the form")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = push(tmp_path, tmp_path_factory, toy_pairs, "--push-to-hub", REPO)
    assert_one_line_error(offline, "--push-to-hub: HF_HUB_OFFLINE=1 forbids network calls")
    assert hub.calls == []
    assert not out.exists()
    assert not (tmp_path / "hf").exists()


def connection_refused() -> Exception:
    """A failed connection as huggingface_hub's HTTP client raises it (httpx2, httpx, requests)."""
    for name in ("httpx2", "httpx"):
        if name in sys.modules:
            return sys.modules[name].ConnectError("[Errno 111] Connection refused")
    return ConnectionError("[Errno 111] Connection refused")  # requests' derive from it


FAILURES = {
    "no network": ("create_repo", connection_refused),
    "no token": ("create_repo", lambda: huggingface_hub.errors.LocalTokenNotFoundError(
        "Token is required (`token=True`), but no token found.")),
    "upload cut": ("upload_folder", lambda: ConnectionError("Connection reset by peer")),
}  # fmt: skip


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_failed_push_is_one_line_and_keeps_the_export(
    tmp_path, tmp_path_factory, toy_pairs, hub, failure
):
    call, make = FAILURES[failure]
    error = make()
    hub.failure = (call, error)
    result = push(tmp_path, tmp_path_factory, toy_pairs, "--push-to-hub", REPO)
    assert_one_line_error(result, f"could not push {tmp_path / 'hf'} to the Hub repo {REPO}")
    assert str(error) in result.stderr
    assert f"hf upload {REPO} {tmp_path / 'hf'}" in result.stderr
    assert hub.calls[-1][0] == call
    assert (tmp_path / "hf" / "model.safetensors").is_file()  # the export stays
