"""The GPU check's report.json as Markdown (report.md): the tables a reader copies into docs/results.md."""
from __future__ import annotations

from typing import Any


def markdown(report: dict[str, Any]) -> str:
    legs = report["legs"]
    speed = [e for e in legs if e["kind"] == "speed"]
    lines = [f"# GPU check: `cifar_resnet` on {report['device']}", "",
             f"torch {report['torch']} (CUDA {report['cuda']}), Python {report['python']}, deepcourse "
             f"{report['deepcourse']}; started {report['started']}, {report.get('elapsed_s', 0):.0f} s of a "
             f"{report['budget_s']:.0f} s budget so far. Packages: {report['install']['how']}.", ""]
    if report["smoke"]:
        lines += ["**SMOKE RUN: a tiny network on tiny data, a few steps per leg. The numbers mean nothing.**", ""]
    if "data" in report:
        d = report["data"]
        lines += [f"{d['train_images']} training images, batch {d['batch_size']} (decoded or read from the cache in "
                  f"{d['decoded_or_read_s']} s).", ""]
    s = report["steps"]
    lines += ["## Speed: a hand-written loop and `deepcourse run`, side by side", "",
              f"Each loop, in this process: steps 1-{s['warmup']} warm up (compilation, cuDNN's choices), the next "
              f"{s['probe']} run under torch's sync debug mode (host syncs counted), the next {s['timed']} are timed "
              f"between two device synchronizations. images/s = timed images / timed seconds; s/step = timed seconds "
              f"per optimizer step; ratio = deepcourse images/s / hand-written images/s. deepcourse logs every "
              f"{s['log_every']} steps.", "",
              "| leg | hand-written img/s | deepcourse img/s | ratio | s/step (hand / deepcourse) | host syncs per "
              "step (hand / deepcourse) | warm-up s (hand / deepcourse) | peak GiB (hand / deepcourse) |",
              "|---|---|---|---|---|---|---|---|"]
    for e in speed:
        if e["status"] != "ok":
            lines.append(f"| {e['label']} | {status(e)} | | | | | | |")
            continue
        h, o = e["hand_written"], e["deepcourse"]
        host_syncs = pair(h.get("host_syncs", {}), o.get("host_syncs", {}), "per_step")
        lines.append(f"| {e['label']} | {h['images_per_s']:,.0f} | {o['images_per_s']:,.0f} | {e['ratio']:.3f} | "
                     f"{pair(h, o, 's_per_step')} | {host_syncs} | {pair(h, o, 'warmup_s')} | "
                     f"{pair(h, o, 'peak_memory_gib')} |")
    lines += syncs(speed) + compiled(speed) + accuracy([e for e in legs if e["kind"] == "accuracy"])
    left = [f"- {e['label']}: {status(e)}" for e in legs if e["status"] not in ("ok",)]
    if left:
        lines += ["", "## Not run, failed or still running", "", *left]
    return "\n".join(lines) + "\n"


def status(entry: dict[str, Any]) -> str:
    detail = entry.get("reason") or entry.get("error") or entry.get("problem") or ""
    return f"{entry['status']}{': ' + detail if detail else ''}"


def pair(hand: dict[str, Any], ours: dict[str, Any], key: str) -> str:
    return f"{fmt(hand.get(key))} / {fmt(ours.get(key))}"


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def syncs(speed: list[dict[str, Any]]) -> list[str]:
    lines = ["", "## Host syncs per steady step, by file:line", ""]
    found = False
    for e in speed:
        for side in ("hand_written", "deepcourse"):
            probe = e.get(side, {}).get("host_syncs")
            if not probe:
                continue
            if "skipped" in probe:
                lines.append(f"- {e['id']}, {side}: {probe['skipped']}")
                found = True
                continue
            found = True
            sites = ", ".join(f"`{s['where']}` {s['per_step']:g}" for s in probe["sites"]) or "none"
            lines.append(f"- {e['id']}, {side}: {probe['per_step']:g} per step over {probe['steps']} steps: {sites}")
    return lines if found else []


def compiled(speed: list[dict[str, Any]]) -> list[str]:
    rows = []
    for e in speed:
        for side in ("hand_written", "deepcourse"):
            c = e.get(side, {}).get("compile")
            if c:
                reasons = "; ".join(c["recompile_reasons"]) or "-"
                rows.append(f"| {side} | {c['recompiles']} | {fmt(c['recompiles_after_warmup'])} | {c['graphs']} | "
                            f"{c['graph_breaks']} | {reasons} |")
    if not rows:
        return []
    return ["", "## torch.compile", "", "| loop | recompiles (whole run) | after warm-up | graphs | graph breaks | "
            "first recompile reasons |", "|---|---|---|---|---|---|", *rows]


def accuracy(legs: list[dict[str, Any]]) -> list[str]:
    lines = ["", "## Time to validation accuracy", "",
             "wall s: since the run started (set-up, evaluations and checkpoints included); train s: the training "
             "epochs' own time, as the loop logs it.", "",
             "| run | 90%: epoch, wall s, train s | 94%: epoch, wall s, train s | best | epochs run | stopped "
             "because |",
             "|---|---|---|---|---|---|"]
    for e in legs:
        if "time_to" not in e:
            lines.append(f"| {e['label']} | {status(e)} | | | | |")
            continue
        cells = []
        for target in ("90%", "94%"):
            hit = e["time_to"].get(target)
            cells.append(f"{hit['epoch']}, {hit['wall_s']}, {hit.get('train_s', '-')}" if hit else "not reached")
        lines.append(f"| {e['label']} | {cells[0]} | {cells[1]} | {fmt(e['best_accuracy'])} | "
                     f"{e.get('epochs', len(e['evaluations']))} | {e['stopped']} |")
    return lines
