"""The docs cannot drift: the recipe reference is regenerated and compared, and every relative link resolves."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def test_recipe_reference_is_up_to_date() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the installed plugins
    out = subprocess.run([sys.executable, "-m", "deepcourse.cli.docgen"], capture_output=True, text=True, env=env,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr
    committed = (REPO / "docs" / "recipe-reference.md").read_text(encoding="utf-8")
    assert out.stdout == committed, ("docs/recipe-reference.md is stale: regenerate it with "
                                     "`python -m deepcourse.cli.docgen > docs/recipe-reference.md`")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks hold examples, not links
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+://|^mailto:|^#", target):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{doc.relative_to(REPO)}: broken link {target}"


def test_every_page_is_in_the_site_navigation() -> None:
    import yaml

    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    listed = {next(iter(item.values())) for item in config["nav"]}
    pages = {str(p.relative_to(REPO / "docs")) for p in (REPO / "docs").rglob("*.md")}
    assert pages == listed, f"mkdocs.yml nav: missing {sorted(pages - listed)}, stale {sorted(listed - pages)}"


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "getting-started" / "index.html").is_file()


@pytest.mark.slow
def test_the_python_example_in_getting_started_runs(tmp_path: Path) -> None:
    """The notebook example of docs/getting-started.md, run as written (in a folder of its own)."""
    pytest.importorskip("deepcourse_vision")
    text = (REPO / "docs" / "getting-started.md").read_text(encoding="utf-8")
    section = text.split("## From Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "test accuracy" in out.stdout and "on 360 images" in out.stdout
    assert list((tmp_path / "runs" / "quickstart").glob("*/best/model.safetensors"))


def test_the_gpu_check_runs_every_leg_in_smoke_mode(tmp_path: Path) -> None:
    """benchmarks/gpu_check.py on a CPU with a tiny CIFAR-like shard: every leg a CPU can run runs in both loops (the
    hand-written one and `deepcourse run`), the others are skipped with their reason, and the report is rewritten
    after every leg."""
    pytest.importorskip("deepcourse_vision")
    import io
    import json

    import numpy as np
    from datasets import ClassLabel, Dataset, Features, Image
    from PIL import Image as PILImage

    rng = np.random.default_rng(0)

    def png(label: int) -> bytes:
        buf = io.BytesIO()
        array = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
        array[label * 3:label * 3 + 3] = 230
        PILImage.fromarray(array).save(buf, format="PNG")
        return buf.getvalue()

    labels = [i % 10 for i in range(400)]
    folder = tmp_path / "data" / "cifar10"
    folder.mkdir(parents=True)
    features = Features({"img": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    Dataset.from_dict({"img": [{"bytes": png(y), "path": None} for y in labels], "label": labels},
                      features=features).to_parquet(str(folder / "train-00000-of-00002.parquet"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # this checkout's code, no test plugins
    env.update(PYTHONPATH=os.pathsep.join(str(REPO / p) for p in ("src", "plugins/vision/src")),
               DEEPCOURSE_CACHE=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--data", str(tmp_path / "data"),
                          "--smoke", "--out", str(tmp_path / "report")], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]

    report = json.loads((tmp_path / "report" / "report.json").read_text())
    legs = {leg["id"]: leg for leg in report["legs"]}
    assert list(legs) == ["base", "fp32", "fp32-no-tf32", "fp16", "no-channels-last", "no-fused", "no-cudnn-benchmark",
                          "host-data", "compiled", "accuracy", "cifar-fast"]
    gpu_only = {"fp32-no-tf32": "TF32", "fp16": "CUDA GPU", "no-cudnn-benchmark": "cuDNN"}
    for leg in (leg for leg in report["legs"] if leg["kind"] == "speed"):
        if leg["id"] in gpu_only:
            assert leg["status"] == "skipped" and gpu_only[leg["id"]] in leg["reason"]
            continue
        assert leg["status"] == "ok" and leg["ratio"] > 0, leg
        for side in ("hand_written", "deepcourse"):
            figures = leg[side]
            assert figures["timed_steps"] == 3 and figures["s_per_step"] > 0 and figures["images_per_s"] > 0
            assert figures["images_per_s"] == pytest.approx(3 * 16 / (3 * figures["s_per_step"]), rel=0.01)
            assert "CUDA" in figures["host_syncs"]["skipped"]  # the sync probe needs a GPU
        assert leg["deepcourse"]["steps"] == 7  # 2 warm-up + 2 probed + 3 timed
    for side in ("hand_written", "deepcourse"):  # compiled (the eager backend) once, no recompilation after
        compiled = legs["compiled"][side]["compile"]
        assert compiled["graphs"] > 0 and compiled["recompiles_after_warmup"] == 0, compiled
    accuracy = legs["accuracy"]
    assert accuracy["status"] == "ok" and accuracy["epochs"] == 2 and set(accuracy["time_to"]) == {"90%", "94%"}
    assert [e["epoch"] for e in accuracy["evaluations"]] == [1, 2]
    assert all(e["train_s"] > 0 and e["wall_s"] > 0 and 0 <= e["accuracy"] <= 1 for e in accuracy["evaluations"])
    assert legs["cifar-fast"]["status"] == "ok" and "cifar_fast90" in legs["cifar-fast"]["label"]
    assert report["smoke"] and report["install"]["how"] == "the installed packages"
    assert out.stdout.count("report written to") == len(legs)  # after every leg
    text = (tmp_path / "report" / "report.md").read_text()
    assert "SMOKE RUN" in text and "| torch.compile on |" in text and "## Time to validation accuracy" in text


def test_the_gpu_check_credits_each_host_sync_to_its_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sync probe counts torch's sync-debug warnings by the line of our code they came through (here a
    function of another file stands for torch, which warns so on a GPU); other warnings are shown, not counted."""
    import warnings

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from gpu_check_loop import SyncLog

    library: dict = {}
    exec(compile("import warnings\ndef item():\n    warnings.warn('called a synchronizing CUDA operation')\n",
                 "/elsewhere/torch_op.py", "exec"), library)
    log = SyncLog(cuda=False, roots=[str(Path(__file__).parent)])
    with log.capturing():
        for _ in range(3):
            line = sys._getframe().f_lineno + 1
            library["item"]()
        warnings.warn("something else", UserWarning, stacklevel=1)
    [(site, count)] = log.sites.items()
    assert count == 3 and re.fullmatch(rf"(tests/)?test_docs\.py:{line} \(in torch_op\.py:3\)", site), site


def test_every_test_and_case_the_reliability_page_cites_exists() -> None:
    """docs/reliability.md names the tests and bad-input cases that prove each guarantee: each must be there."""
    import tomllib

    text = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
    sources = "\n".join(p.read_text(encoding="utf-8") for p in [*REPO.glob("tests/test_*.py"),
                                                                 *REPO.glob("plugins/*/tests/test_*.py")])
    defined = set(re.findall(r"^def (test_\w+)", sources, flags=re.M))
    cited = {name for name in re.findall(r"`(?:[\w/]+\.py::)?(test_\w+)(?:\[[^\]]*\])?`", text)}
    assert len(cited) > 25 and not cited - defined, sorted(cited - defined)
    for path in re.findall(r"`((?:tests|plugins)/[\w/]+\.py)(?:::\w+)?`", text):
        assert (REPO / path).is_file(), path
    cases = set(tomllib.loads((REPO / "tests" / "bad_inputs" / "expected.toml").read_text())) | {"<case>"}
    named = set()
    for listing in re.findall(r"cases? ((?:`[\w<>*]+`(?:, | and |; )?)+)", text):
        named |= set(re.findall(r"`([\w<>]+)`", listing))
    for row in re.findall(r"^\|[^|\n]*\|[^|\n]*\| ([^|\n]*) \|$", text.split("The classes it covers")[1], flags=re.M):
        named |= {n for n in re.findall(r"`(\w+)`", row) if not n.startswith("test_")}
    named = {n for n in named if not n.startswith("test_")}
    assert len(named) > 30 and not named - cases, sorted(named - cases)
