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
    """benchmarks/gpu_check.py on a CPU with a tiny CIFAR-like shard: every leg runs and reports its figures."""
    pytest.importorskip("deepcourse_vision")
    import io

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
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--data", str(tmp_path / "data"),
                          "--smoke", "--out", str(tmp_path / "check.json")], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    report = json.loads((tmp_path / "check.json").read_text())
    assert [leg["leg"] for leg in report["legs"]] == ["fp32 eager", "bf16 eager", "bf16 compiled",
                                                       "bf16 eager, data on the GPU", "bf16, accuracy run"]
    assert all(leg["images_per_s"] > 0 and leg["last_epoch_s"] > 0 for leg in report["legs"])
    assert report["smoke"] and 0 <= report["legs"][-1]["held_out_accuracy"] <= 1
    assert report["legs"][-1]["held_out_images"] == 32  # of the 80 held out (20%), never trained on
    assert "| bf16 compiled |" in out.stdout


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
