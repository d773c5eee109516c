"""The toy reproduction's evaluation table: every row of sfv_jax/eval/toy_table.py scored by `sfv-jax eval toy`
on the same held-out clips, then the table and its goals as markdown.

    python tools/toy_table.py --teacher runs/toy/teacher --student runs/toy/student \
        [--student-spatial runs/toy/student_spatial --student-temporal runs/toy/student_temporal] \
        --num-clips 256 --seed 0 --out runs/toy/table

Each row's JSON lands in OUT/rows/ as it finishes and is reused on a rerun while its weights (the checkpoint's
fingerprint), clip count and seed are the same: an interrupted table resumes, and one kept in git can be finished
over several sessions without mixing models. The held-out set's I3D statistics are computed once
(OUT/real_stats.npz). Writes OUT/table.md and OUT/table.json, and with --cards the table into each model card given
(between its two marker lines, sfv_jax.eval.toy_table.CARD_TABLE_START / _END).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from sfv_jax.checkpoint import fingerprint
from sfv_jax.fileio import read_json_object, write_text_atomically
from sfv_jax.errors import SfvError
from sfv_jax.eval.toy_table import markdown, rows_for, rows_saved_without_weights, stale_reason, with_table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, metavar="CKPT_OR_WORKDIR")
    parser.add_argument("--student", required=True, metavar="CKPT_OR_WORKDIR")
    parser.add_argument("--student-spatial", metavar="CKPT_OR_WORKDIR", help="the spatial-heads-only student")
    parser.add_argument("--student-temporal", metavar="CKPT_OR_WORKDIR", help="the temporal-heads-only student")
    parser.add_argument("--num-clips", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.add_argument("--saved-only", action="store_true",
                        help="compute nothing: the table of the rows already saved that are still valid (the others "
                             "left out, goals needing them 'not measured'); rows saved for a model not given here "
                             "(the ablation students, whose weights are not shipped) are reported as saved, their "
                             "fingerprints in table.json")
    parser.add_argument("--cards", nargs="+", default=[], metavar="README",
                        help="model cards (markdown) to write the table into, between their marker lines")
    args = parser.parse_args()

    checkpoints = {"teacher": args.teacher, "student": args.student, "student_spatial": args.student_spatial,
                   "student_temporal": args.student_temporal}
    checkpoints = {k: v for k, v in checkpoints.items() if v}
    for name, path in checkpoints.items():
        if not os.path.exists(path):
            print(f"toy_table: error: --{name.replace('_', '-')} {path}: no such checkpoint or workdir", file=sys.stderr)
            return 2
    try:
        fingerprints = {name: fingerprint(path) for name, path in checkpoints.items()}
        cards = {path: read_card(path) for path in args.cards}  # checked before any row is computed
    except (SfvError, ValueError) as e:
        print(f"toy_table: error: {e}", file=sys.stderr)
        return 2
    os.makedirs(os.path.join(args.out, "rows"), exist_ok=True)
    results = {}
    for row in rows_for(set(checkpoints)):
        path = os.path.join(args.out, "rows", f"{row.model}_{row.steps}.json")
        saved = read_json_object(path) if os.path.exists(path) else None
        stale = stale_reason(saved, fingerprints[row.model], args.num_clips, args.seed)
        if stale and args.saved_only:
            print(f"== {row.name}: left out ({stale})", flush=True)
            continue
        if stale:
            print(f"== {row.name}" + (f": {stale}" if saved else ""), flush=True)
            # One process per row: each compiles its own sampler, and an interrupted table loses one row at most.
            code = subprocess.call([sys.executable, "-m", "sfv_jax", "eval", "toy", "--checkpoint",
                                    checkpoints[row.model], "--steps", str(row.steps), "--sampler", row.sampler,
                                    "--num-clips", str(args.num_clips), "--seed", str(args.seed),
                                    "--batch-size", str(args.batch_size),
                                    "--real-stats", os.path.join(args.out, "real_stats.npz"), "--json", path],
                                   stdout=subprocess.DEVNULL)
            if code:
                return code
            saved = read_json_object(path)
        results[(row.model, row.steps)] = saved
    settings = (f"{args.num_clips} held-out synthetic clips (seed {args.seed}), teacher {args.teacher}, "
                f"student {args.student}")
    models = set(checkpoints)
    if args.saved_only:
        without_weights = rows_saved_without_weights(os.path.join(args.out, "rows"), models, args.num_clips,
                                                     args.seed)
        absent = sorted({model for model, _ in without_weights})
        results.update(without_weights)
        if absent:
            models |= set(absent)
            settings += f"; {', '.join(absent)} as saved (weights not given here; fingerprints in table.json)"
    wanted = len(rows_for(models))
    if len(results) < wanted:
        settings += f"; partial: {len(results)} of {wanted} rows computed so far"
    text = markdown(results, settings)
    write_text_atomically(os.path.join(args.out, "table.md"), text)
    write_text_atomically(os.path.join(args.out, "table.json"),
                          json.dumps({f"{m}_{n}": r for (m, n), r in results.items()}, indent=2))
    for path, card in cards.items():
        write_text_atomically(path, with_table(card, text, path))
    print(text)
    return 0


def read_card(path: str) -> str:
    """A model card's text, checked to have the table's marker lines (ValueError, one line, otherwise)."""
    if not os.path.isfile(path):
        raise ValueError(f"--cards {path}: no such file")
    with open(path) as f:
        card = f.read()
    with_table(card, "", path)
    return card


if __name__ == "__main__":
    sys.exit(main())
