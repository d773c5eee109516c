"""The GPU check's goals (met or not) and the short table printed at the end of a run."""

from __future__ import annotations

import operator
from typing import Any

from sfv_jax.bench import report
from tools.gpu_check.parity import BF16_BOUND, FLOAT32_BOUND

# (name, section, what it reads, comparison, target, unit, a speed goal): the project's targets for one H200.
GOALS = (
    ("one-step end to end, SVD-XT 14x576x1024 bf16", "inference", "end_to_end_s", "<=", 0.35, "s", True),
    ("UNet stage of that step", "inference", "unet_s", "<=", 0.1, "s", True),
    ("train-step MFU against the chip's bf16 peak", "train", "mfu", ">=", 0.40, "", True),
    ("float32 parity with diffusers/transformers, worst rel L2", "parity", "parity_float32", "<=", FLOAT32_BOUND, "",
     False),
    ("bf16 compute (+ cuDNN attention on a GPU) vs float32, worst rel L2", "parity", "parity_bf16", "<=", BF16_BOUND,
     "", False),
)
COMPARE = {"<=": operator.le, ">=": operator.ge}


def _result(payload: dict, section: str) -> dict:
    return (payload["sections"].get(section) or {}).get("result") or {}


def measured(payload: dict) -> dict[str, float | None]:
    """The values the goals compare, None where a section did not produce them."""
    best = _result(payload, "inference").get("best") or {}
    train = _result(payload, "train").get("result") or {}
    parity = list((_result(payload, "parity").get("components") or {}).values())
    worst = lambda key: max(r[key] for r in parity) if parity else None
    return {"end_to_end_s": best.get("end_to_end_s"), "unet_s": best.get("unet_s"), "mfu": train.get("mfu"),
            "parity_float32": worst("rel_l2_float32"), "parity_bf16": worst("rel_l2_bf16_vs_float32")}


def goals(payload: dict) -> list[dict[str, Any]]:
    """Each goal with its value and whether it was met. None: not measured, measured by a section that did
    not finish (its value covers only part of what the goal is about), or a speed goal of a dry run, whose
    tiny sizes say nothing about a GPU's speed."""
    values = measured(payload)
    rows = []
    for name, section, key, op, target, unit, speed in GOALS:
        value = values[key]
        status = (payload["sections"].get(section) or {}).get("status", "not run")
        judged = value is not None and status == "ok" and not (speed and payload["dry_run"])
        row = {"goal": name, "value": value, "target": f"{op} {target:g}{unit}",
               "met": bool(COMPARE[op](value, target)) if judged else None}
        if status != "ok":
            row["note"] = f"section {section}: {status}"
        rows.append(row)
    return rows


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.2e}" if abs(value) < 1e-2 and value else f"{value:.{digits}g}"


def section_line(name: str, section: dict) -> str:
    """The few numbers of a section worth a glance."""
    r = section.get("result") or {}
    if section["status"] != "ok" and not r:
        return section.get("error") or ""
    if name == "parity":
        parts = [f"{c}: f32 {_fmt(e['rel_l2_float32'])}, bf16 {_fmt(e['rel_l2_bf16_vs_float32'])}"
                 + (f", f32 default precision {_fmt(e['rel_l2_float32_default_precision'])}"
                    if "rel_l2_float32_default_precision" in e else "")
                 for c, e in (r.get("components") or {}).items()]
        return "; ".join(parts)
    if name == "conv":
        return "; ".join(f"{kind}: fastest {'/'.join(s['fastest'])}, sfv-jax's pick "
                         f"{'is' if s['picked_is_fastest'] else 'is not'} it "
                         f"(worst x{s['worst_picked_over_fastest']:.2f})"
                         for kind, s in (r.get("summary") or {}).items())
    if name == "inference":
        parts = []
        for impl, run in (r.get("unet_attention") or {}).items():
            if "end_to_end_s" in run:
                stages = run["stages"]
                compiled = [s for s in stages if s not in ("total", "host")]
                parts.append(f"{impl}: end to end {_fmt(run['end_to_end_s'])} s ("
                             + ", ".join(f"{s} {_fmt(stages[s]['steady_s'])}" for s in stages if s != "total")
                             + "; compile " + ", ".join(_fmt(stages[s]["compile_s"]) for s in compiled) + ")")
            else:
                parts.append(f"{impl}: {run.get('error') or run.get('skipped')}"[:200])
        return "; ".join(parts)
    if name == "train":
        t = r.get("result") or {}
        gib = (t.get("device_peak_bytes") or 0) / 2 ** 30
        return (f"micro-batch {(r.get('setup') or {}).get('micro_batch')}: step {_fmt(t.get('step_s'))} s, "
                f"{report.fmt_number(t.get('flops_per_s'))}FLOP/s, MFU {_fmt(t.get('mfu'))}, peak {gib:.1f} GiB; "
                f"attempts {[(a['micro_batch'], a['status']) for a in r.get('attempts', [])]}")
    return ""


def format_summary(payload: dict) -> str:
    """Markdown tables of the sections (status, seconds against budget, key numbers) and of the goals."""
    rows = []
    for name, s in payload["sections"].items():
        numbers = section_line(name, s)
        if s["error"] and s["error"] not in numbers:  # partial numbers of a failed section: say why too
            numbers = f"{s['error'][:200]} -- {numbers}"
        rows.append([name, s["status"], f"{s['seconds']:.0f}/{s['budget_s']:.0f}", numbers[:600].replace("|", "/")])
    lines = [report.markdown_table(["section", "status", "s / budget", "numbers"], rows), ""]
    lines.append(report.markdown_table(
        ["goal", "value", "target", "met"],
        [[g["goal"], _fmt(g["value"]), g["target"], {True: "yes", False: "NO", None: "-"}[g["met"]]
          + (f" ({g['note']})" if "note" in g else "")]
         for g in payload["goals"]]))
    return "\n".join(lines)
