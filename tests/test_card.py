"""The model card (`deepcourse card`, and `report`) and `deepcourse push`: the card's metadata and its spread over
seed siblings, the staged folder read for real, and the upload against a mock of huggingface_hub's HTTP client."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from deepcourse.results.publish import staged
from deepcourse.testing import cli as main


def cli(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def seed_runs(tmp_path_factory: pytest.TempPathFactory, plugin_site: Path) -> list[Path]:
    from core_support import TOY_RECIPE

    folder = tmp_path_factory.mktemp("card")
    (folder / "toy.toml").write_text(TOY_RECIPE.replace("epochs = 3", "epochs = 1"))
    runs = []
    for seed in (1, 2):
        run = folder / "sweep" / f"seed{seed}"
        result = cli("run", folder / "toy.toml", "--run-dir", run, "--set", f"seed={seed}")
        assert result.exit_code == 0, result.output
        runs.append(run)
    return runs


def header(card: Path) -> dict:
    text = card.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_the_run_report_writes_a_card_with_metadata_and_seed_spread(seed_runs: list[Path]) -> None:
    card = seed_runs[0] / "README.md"  # written by the run's report
    meta = header(card)
    assert meta["library_name"] == "deepcourse" and meta["datasets"] == ["toy_blobs"]
    assert {"deepcourse", "toy-classification", "toy_mlp"} <= set(meta["tags"])
    results = meta["model-index"][0]["results"]
    accuracy = json.loads((seed_runs[0] / "summary.json").read_text())["best"]["accuracy"]
    assert {"type": "accuracy", "value": round(accuracy, 6)} in results[0]["metrics"]
    text = card.read_text(encoding="utf-8")
    assert "![loss](report/loss.png)" in text and "## Limitations" in text and "```toml" in text
    assert "without repeats their spread is unknown" in text  # written before the second seed had run


def test_card_command_shows_the_spread_over_the_seed_siblings(seed_runs: list[Path]) -> None:
    result = cli("card", seed_runs[0])
    assert result.exit_code == 0, result.output
    text = (seed_runs[0] / "README.md").read_text(encoding="utf-8")
    assert "differ only in their seed (seeds 1, 2)" in text and "(n=2)" in text and "95% CI" in text


def test_the_staged_folder_holds_weights_card_recipe_and_figures(seed_runs: list[Path]) -> None:
    from safetensors.torch import load_file

    with staged(seed_runs[0]) as (folder, files):
        assert {"README.md", "recipe.toml", "model.safetensors", "facts.json", "report/loss.png"} <= set(files)
        assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == files
        assert load_file(str(folder / "model.safetensors")).keys() == \
            load_file(str(seed_runs[0] / "best" / "model.safetensors")).keys()
        assert (folder / "recipe.toml").read_text() == (seed_runs[0] / "recipe.toml").read_text()


def test_push_without_a_token_exits_2(seed_runs: list[Path], monkeypatch: pytest.MonkeyPatch,
                                      tmp_path: Path) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.setattr("huggingface_hub.constants.HF_STORED_TOKENS_PATH", str(tmp_path / "tokens"))
    result = cli("push", seed_runs[0], "me/toy")
    assert result.exit_code == 2 and "no Hugging Face token" in result.output, result.output


def test_push_uploads_the_staged_folder_in_one_commit(seed_runs: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the HTTP client is replaced (huggingface_hub's client factory, a mock transport): HfApi runs for real."""
    import huggingface_hub
    from huggingface_hub.utils import _http

    http = pytest.importorskip(_http.__dict__.get("httpx2", _http.__dict__.get("httpx")).__name__)
    seen: list[tuple[str, str]] = []
    committed: list[str] = []

    def handler(request):
        seen.append((request.method, request.url.path))
        path = request.url.path
        if path.endswith("/preupload/main"):
            files = json.loads(request.content)["files"]
            return http.Response(200, json={"files": [{"path": f["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False} for f in files]})
        if path.endswith("/commit/main"):
            lines = [json.loads(line) for line in request.content.decode().splitlines()]
            committed.extend(line["value"]["path"] for line in lines if line.get("key") == "file")
            return http.Response(200, json={"commitUrl": "https://huggingface.co/me/toy/commit/1",
                                            "commitOid": "a" * 40, "pullRequestUrl": None})
        if path in ("/api/repos/create", "/api/validate-yaml"):
            return http.Response(200, json={"url": "https://huggingface.co/me/toy"})
        return http.Response(404, json={"error": f"unexpected {path}"})

    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    huggingface_hub.set_client_factory(lambda: http.Client(transport=http.MockTransport(handler)))
    huggingface_hub.close_session()
    try:
        result = cli("push", seed_runs[0], "me/toy")
    finally:
        huggingface_hub.set_client_factory(_http.default_client_factory)
        huggingface_hub.close_session()
    assert result.exit_code == 0, result.output
    assert "pushed: https://huggingface.co/me/toy/commit/1" in result.output
    assert ("POST", "/api/models/me/toy/commit/main") in seen
    with staged(seed_runs[0]) as (_, files):
        assert sorted(committed) == files


def test_push_to_a_malformed_repo_id_exits_2(seed_runs: list[Path]) -> None:
    result = cli("push", seed_runs[0], "no-slash")
    assert result.exit_code == 2 and "user/name" in result.output, result.output
