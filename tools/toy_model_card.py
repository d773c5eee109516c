"""Writes the model card (README.md) of a shipped toy model from the training workdir it was converted from.

    sfv-jax convert --workdir runs/toy/teacher --out models/toy/teacher --dtype bfloat16
    python tools/toy_model_card.py --workdir runs/toy/teacher --model models/toy/teacher \
        --command "sfv-jax train --config configs/toy.py:teacher ..." [--table runs/toy/table/table.md]

The card holds what a user needs to trust and reproduce the model: the data, the architecture and parameter
counts, the run's settings (objective, steps, batch, optimiser, EMA, where it started), the held-out eval_loss
curve, the training time (the logged intervals summed: compilation and restarts excluded), the git commit, the
command, how to load it, and optionally the evaluation table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sfv_jax.eval.toy_table import CARD_TABLE_END, CARD_TABLE_START  # noqa: E402
from sfv_jax.fileio import read_json_object  # noqa: E402
from sfv_jax.train.metrics_log import read_metrics  # noqa: E402

SMALL_EVAL_FILE = "eval_toy.json"


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parameter_counts(model: str) -> dict[str, int]:
    """{component: parameter count} from the shipped checkpoint's stored shapes."""
    from sfv_jax.checkpoint import read_index
    from sfv_jax.convert.components import component_for_class
    from sfv_jax.models import ModelOptions
    from sfv_jax.models.nnx_state import AbstractModel
    counts = {}
    for name, entry in read_index(model)["components"].items():
        component = component_for_class(entry["class"], name)
        config = component.config_from_dict(entry["config"])
        shapes = AbstractModel(lambda rngs: component.build(config, ModelOptions(), rngs)).shapes
        counts[name] = sum(int(s.size) for s in shapes.values())
    return counts


def learning_rates(optim: dict) -> str:
    """"lr 0.0002" for one model, "G lr 0.0001, D lr 0.0001 (sm3)" for SF-V's two."""
    if optim.get("g_lr") is not None:
        return f"G lr {optim['g_lr']}, D lr {optim['d_lr']} ({optim.get('name')})"
    return f"lr {optim.get('lr')} ({optim.get('name')})"


def training_seconds(metrics: list[dict]) -> float:
    """The logged intervals summed: each row's steps since the previous row over its steps_per_s."""
    total, previous = 0.0, None
    for row in metrics:
        if "steps_per_s" in row and previous is not None and row["steps_per_s"] > 0:
            total += (row["step"] - previous) / row["steps_per_s"]
        previous = row["step"]
    return total


def small_eval_section(model: str, small_eval: dict) -> list[str]:
    """The card's small fixed-set score (kept beside the weights as eval_toy.json, checked by the default tests)."""
    rel = os.path.relpath(model, ROOT)
    return [
        "## Small fixed-set score (checked by the tests)", "",
        f"`sfv-jax eval toy --checkpoint {rel} --steps {small_eval['steps']} --sampler {small_eval['sampler']} "
        f"--num-clips {small_eval['num_clips']} --seed {small_eval['seed']} --batch-size {small_eval['batch_size']}`:",
        f"FVD {small_eval['fvd']:.1f}, coherent motion {small_eval['motion_coherent_share']:.1%}, speed distance "
        f"{small_eval['speed_distance']:.3f} px/frame. {small_eval['num_clips']} clips make this a check that these "
        f"weights and the evaluation code still give this number, not a quality score (the table uses 256 clips).",
        f"All of it in `{rel}/{SMALL_EVAL_FILE}`; tests/test_toy_models.py recomputes the FVD.", ""]


def card(workdir: str, model: str, command: str, table: str | None, small_eval: dict | None = None) -> str:
    config = read_json_object(os.path.join(workdir, "config.json"))
    index = read_json_object(os.path.join(model, "sfv_jax.json"))
    objective, step = index["extra"].get("objective", "sfv"), index["extra"]["step"]
    # The run may have gone on after the shipped checkpoint: its card describes the checkpoint.
    metrics = [m for m in read_metrics(os.path.join(workdir, "metrics.jsonl")) if m["step"] <= step]
    data, optim = config["data"], config["optim"]
    counts = parameter_counts(model)
    evals = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]
    widths = {k: config[k]["block_out_channels"] for k in ("unet", "vae") if k in config}
    lines = [
        f"# sfv-jax toy model: {os.path.basename(os.path.normpath(model))}", "",
        f"An SVD-architecture model trained by sfv-jax, from random weights up (the toy stack: VAE, teacher, "
        f"SF-V student), on the built-in synthetic moving shapes (objective `{objective}`, step {step}). A toy: it "
        f"knows discs and squares gliding over gradients, nothing else.", "",
        "```python", "from sfv_jax.pipeline import SFVPipeline",
        f'pipe = SFVPipeline.from_pretrained("{os.path.relpath(model, ROOT)}")', "```", "",
        "| | |", "|---|---|",
        f"| data | `sfv_jax/data/synthetic.py`: {data['num_synthetic']} training clips (seed {config['seed']}), "
        f"{data['num_frames']} frames of {data['height']}x{data['width']}; held-out clips from another seed |",
        f"| architecture | SVD's (every block type), widths {widths}; CLIP ViT "
        f"{config['image_encoder']['num_hidden_layers']} layers, width {config['image_encoder']['hidden_size']} |",
        f"| parameters | {', '.join(f'{k} {v:,}' for k, v in counts.items())} |",
        f"| weights | bfloat16 sfv-jax checkpoint, {folder_bytes(model) / 2**20:.1f} MiB (EMA weights of the run) |",
        f"| started from | {config.get('init_checkpoint') or 'random weights'}; what that does not hold from "
        f"`scratch_init={config.get('scratch_init', 'torch')}` (sfv_jax/models/scratch_init.py) |",
        f"| training | {step} steps, batch {config['global_batch_size']}, {learning_rates(optim)}, "
        f"EMA decay {optim.get('ema_decay')}, {training_seconds(metrics) / 60:.0f} min of logged steps on the "
        f"machine below |",
        f"| machine | 2-core AMD EPYC CPU, 24 GB RAM, no accelerator (shared: timings drift up to 1.5x) |",
        f"| code | sfv-jax at commit {git_commit()} when shipped |", "",
        "Reproduce:", "", "```bash", command, "```", "",
        "Held-out `eval_loss` during training (every eighth of the run; all of it in the workdir's metrics.jsonl):",
        "", "| step | eval_loss |", "|---|---|",
        *[f"| {s} | {v:.4f} |" for s, v in evals if s % max(step // 8, 1) == 0 or s == evals[-1][0]], ""]
    if small_eval:
        lines += small_eval_section(model, small_eval)
    if table:
        with open(table) as f:
            # between the markers `tools/toy_table.py --cards` rewrites, so a later table can replace this one
            lines += ["## Evaluation table", "", CARD_TABLE_START, f.read().strip(), CARD_TABLE_END, ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="the training workdir the model was converted from")
    parser.add_argument("--model", required=True, help="the shipped checkpoint folder (sfv-jax convert --workdir)")
    parser.add_argument("--command", required=True, help="the training command, as run")
    parser.add_argument("--table", default=None, help="an evaluation table (markdown) to include")
    parser.add_argument("--small-eval", default=None, metavar="F.json",
                        help="an `sfv-jax eval toy --json` result on a small fixed set: kept as eval_toy.json "
                             "beside the weights and stated in the card (the tests recompute it)")
    args = parser.parse_args(argv)
    small_eval = None
    if args.small_eval:
        from sfv_jax.checkpoint import fingerprint
        from sfv_jax.fileio import write_text_atomically
        small_eval = read_json_object(args.small_eval)
        if small_eval.get("checkpoint_fingerprint") != fingerprint(args.model):
            parser.error(f"--small-eval {args.small_eval} scored other weights than {args.model}; rerun sfv-jax eval "
                         f"toy --checkpoint {args.model}")
        write_text_atomically(os.path.join(args.model, SMALL_EVAL_FILE), json.dumps(small_eval, indent=2) + "\n")
    text = card(args.workdir, args.model, args.command, args.table, small_eval)
    with open(os.path.join(args.model, "README.md"), "w") as f:
        f.write(text)
    print(f"wrote {os.path.join(args.model, 'README.md')}")


if __name__ == "__main__":
    main()
