"""The toy reproduction's table (SF-V's Table 1 at toy scale): which rows, the goals, and the markdown.

Every row is one `sfv-jax eval toy` result (eval/toy.py) on the same held-out clips and seed. The goals are the
toy issue's, checked as stated and reported met or not, never loosened:
  1. the student at 1 step within 10% of the teacher at 25 steps, on FVD and on the motion report's coherent
     share (each compared in its worse direction: FVD may be at most 1.1x, the share at least 0.9x);
  2. the teacher at 1 step at least 2x worse (FVD) than the student at 1 step;
  3. the two-head student better (lower FVD) than each one-head ablation.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Row:
    """One table row: which model (a key of the checkpoints given), how many steps, which sampler."""

    name: str
    model: str  # "teacher" | "student" | "student_spatial" | "student_temporal"
    steps: int
    sampler: str  # "euler" (SVD's, with CFG above one step) | "sfv" (SF-V's refinement)


ROWS = (
    *(Row(f"teacher, {n} step{'s' if n > 1 else ''} (Euler + CFG)", "teacher", n, "euler")
      for n in (25, 16, 8, 4, 2, 1)),
    Row("student, 1 step", "student", 1, "sfv"),
    Row("student, 2 steps (SF-V refinement)", "student", 2, "sfv"),
    Row("student, 3 steps (SF-V refinement)", "student", 3, "sfv"),
    Row("student, spatial heads only, 1 step", "student_spatial", 1, "sfv"),
    Row("student, temporal heads only, 1 step", "student_temporal", 1, "sfv"),
)

ALL_MODELS = frozenset(row.model for row in ROWS)


def rows_for(models: set[str]) -> list[Row]:
    """The rows whose model was given."""
    return [row for row in ROWS if row.model in models]


def stale_reason(saved: dict | None, weights: str, num_clips: int, seed: int) -> str | None:
    """Why a row must be (re)computed, or None to reuse `saved` (its earlier `eval toy` JSON): only a row of the
    same weights (checkpoint fingerprint), clip count and seed is reused, so a table kept across sessions never
    mixes models or settings."""
    if saved is None:
        return "not computed yet"
    for key, want in (("checkpoint_fingerprint", weights), ("num_clips", num_clips), ("seed", seed)):
        if saved.get(key) != want:
            return f"recomputing: its {key} {saved.get(key)} is not {want}"
    return None


def rows_saved_without_weights(rows_dir: str, given: set[str], num_clips: int, seed: int) -> dict:
    """{(model, steps): saved JSON} for the rows saved in rows_dir (as "<model>_<steps>.json") of the models NOT
    in `given`, whose weights are not at hand (the ablation students are trained and scored in one session, not
    shipped): reported as they were saved when their clip count and seed are the table's. Their fingerprints stay
    in the JSON, so what they scored is still named."""
    import os

    from sfv_jax.fileio import read_json_object

    found = {}
    for row in rows_for(ALL_MODELS - set(given)):
        path = os.path.join(rows_dir, f"{row.model}_{row.steps}.json")
        if os.path.exists(path):
            saved = read_json_object(path)
            if (saved.get("num_clips"), saved.get("seed")) == (num_clips, seed):
                found[(row.model, row.steps)] = saved
    return found


def _get(results: dict, model: str, steps: int) -> dict | None:
    return results.get((model, steps))


def goals(results: dict) -> list[dict]:
    """Each goal: {"goal", "met" (True / False / None where a row is missing), "detail"}.

    results: {(model, steps): eval toy JSON dict}.
    """
    out = []
    teacher25, student1, teacher1 = (_get(results, m, n) for m, n in (("teacher", 25), ("student", 1),
                                                                      ("teacher", 1)))
    if teacher25 and student1:
        fvd_ratio = student1["fvd"] / teacher25["fvd"]
        share_t, share_s = teacher25["motion_coherent_share"], student1["motion_coherent_share"]
        share_ratio = share_s / share_t if share_t else float("inf") if share_s else 1.0
        met = fvd_ratio <= 1.1 and share_ratio >= 0.9
        detail = (f"FVD {student1['fvd']:.1f} vs {teacher25['fvd']:.1f} ({fvd_ratio:.2f}x, goal <= 1.10x); coherent "
                  f"share {share_s:.1%} vs {share_t:.1%} ({share_ratio:.2f}x, goal >= 0.90x)")
    else:
        met, detail = None, "needs the teacher at 25 steps and the student at 1 step"
    out.append({"goal": "student at 1 step within 10% of the teacher at 25 steps", "met": met, "detail": detail})
    if teacher1 and student1:
        ratio = teacher1["fvd"] / student1["fvd"]
        met, detail = ratio >= 2.0, f"FVD {teacher1['fvd']:.1f} vs {student1['fvd']:.1f} ({ratio:.2f}x, goal >= 2x)"
    else:
        met, detail = None, "needs the teacher and the student at 1 step"
    out.append({"goal": "teacher at 1 step at least 2x worse than the student at 1 step", "met": met,
                "detail": detail})
    ablations = [(name, _get(results, model, 1)) for name, model in (("spatial only", "student_spatial"),
                                                                      ("temporal only", "student_temporal"))]
    if student1 and all(a for _, a in ablations):
        met = all(student1["fvd"] < a["fvd"] for _, a in ablations)
        detail = f"FVD both heads {student1['fvd']:.1f}: " + ", ".join(
            f"{1 - student1['fvd'] / a['fvd']:.1%} below {name} ({a['fvd']:.1f})" for name, a in ablations)
    else:
        met, detail = None, "needs the student and both one-head ablations at 1 step"
    out.append({"goal": "two-head student better than each one-head ablation", "met": met, "detail": detail})
    return out


def markdown(results: dict, settings: str) -> str:
    """The table and the goals as markdown (BENCHMARKS.md and the model cards)."""
    lines = [settings, "",
             "| model | FVD | coherent motion | speed distance (px/frame) | UNet s/clip | end-to-end s/clip |",
             "|---|---|---|---|---|---|"]
    for row in ROWS:
        r = _get(results, row.model, row.steps)
        if r is None:
            continue
        speed = "n/a" if r["speed_distance"] is None else f"{r['speed_distance']:.3f}"
        lines.append(f"| {row.name} | {r['fvd']:.1f} | {r['motion_coherent_share']:.1%} | {speed} | "
                     f"{r['unet_seconds_per_clip']:.3f} | {r['seconds_per_clip']:.3f} |")
    lines += ["", "| goal | met | measured |", "|---|---|---|"]
    for g in goals(results):
        met = {True: "yes", False: "**no**", None: "not measured"}[g["met"]]
        lines.append(f"| {g['goal']} | {met} | {g['detail']} |")
    return "\n".join(lines) + "\n"


# A model card holds the table between these two lines; `tools/toy_table.py --cards` rewrites what is between them.
CARD_TABLE_START = "<!-- toy table start: written by tools/toy_table.py --cards, edits between these lines are lost -->"
CARD_TABLE_END = "<!-- toy table end -->"


def with_table(card: str, table: str, where: str = "the card") -> str:
    """card (a model card's markdown) with the text between CARD_TABLE_START and CARD_TABLE_END replaced by table.

    Raises ValueError (one line, naming `where`) when the card lacks the two marker lines, holds either twice, or
    holds them out of order: a card is never rewritten by guess."""
    lines = card.split("\n")
    starts = [i for i, line in enumerate(lines) if line.strip() == CARD_TABLE_START]
    ends = [i for i, line in enumerate(lines) if line.strip() == CARD_TABLE_END]
    if len(starts) != 1 or len(ends) != 1 or starts[0] > ends[0]:
        raise ValueError(f"{where}: needs the line {CARD_TABLE_START!r} and, below it, the line {CARD_TABLE_END!r}, "
                         f"once each, where the table goes (found {len(starts)} and {len(ends)})")
    return "\n".join(lines[:starts[0] + 1] + [table.rstrip("\n")] + lines[ends[0]:])
