"""The Colab notebook runs headless: parameters injected as papermill does, a tiny local checkpoint, no network.

A tiny random SVD pipeline (configs/tiny.py) is written as a diffusers folder and converted with
`sfv-jax convert`; the notebook then runs in a fresh IPython kernel (nbclient) on two fake CPU
devices, with two videos so the batch is sharded over the mesh, and must write both videos with the
requested frame count and size. The repository copy must have no outputs and a heading per cell.
"""

from __future__ import annotations

import ast
import json
import os
import sys

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "colab", "sfv_one_step.ipynb")
REQUIRED_PARAMETERS = {"checkpoint", "image", "output_path", "num_frames", "height", "width", "install"}
KERNEL = "sfv-jax-test"


def read_notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def parameters_index(nb) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"exactly one cell must carry the papermill tag 'parameters', found {len(tagged)}"
    return tagged[0]


def assigned_names(source: str) -> set[str]:
    return {t.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


def test_repository_notebook_is_clean_and_every_cell_has_a_heading():
    nb = read_notebook()
    nbformat.validate(nb)
    index = parameters_index(nb)
    assert nb.cells[index].cell_type == "code"
    assert REQUIRED_PARAMETERS <= assigned_names(nb.cells[index].source)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [] and cell.execution_count is None, f"cell {i} has outputs: clear them"
        previous = nb.cells[i - 1] if i else None
        assert previous is not None and previous.cell_type == "markdown", f"code cell {i} has no markdown heading"
        heading = previous.source.splitlines()[0] if previous.source else ""
        assert heading.startswith("#") and len(heading.lstrip("# ").strip()) > 10, \
            f"code cell {i}: the markdown cell before it must start with a one-line heading, got {heading!r}"
        ast.parse(cell.source)  # every cell is plain Python (no shell magics), so it runs under any kernel


def test_colab_badge_points_at_the_notebook():
    badge = ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
             "(https://colab.research.google.com/github/sfv-jax/sfv-jax/blob/main/colab/sfv_one_step.ipynb)")
    assert badge in read_notebook().cells[0].source
    with open(os.path.join(ROOT, "README.md")) as f:
        assert badge in f.read()


def inject_parameters(nb, values: dict) -> None:
    """Inserts an `injected-parameters` cell after the `parameters` cell, as papermill does."""
    cell = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in values.items()))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(parameters_index(nb) + 1, cell)


def tiny_checkpoint(root: str) -> str:
    """configs/tiny.py with random weights -> a diffusers pipeline folder -> `sfv-jax convert`."""
    from sfv_jax.cli import main
    from sfv_jax.config import load_config
    from sfv_jax.convert.pipeline import write_diffusers_folder
    from sfv_jax.convert.svd_pipeline_files import svd_pipeline_files
    from sfv_jax.models.factory import random_components

    config = load_config(os.path.join(ROOT, "configs", "tiny.py"))
    diffusers_dir, checkpoint = os.path.join(root, "diffusers"), os.path.join(root, "checkpoint")
    write_diffusers_folder(random_components(config, seed=0), diffusers_dir, pipeline=svd_pipeline_files())
    assert main(["convert", "--diffusers", diffusers_dir, "--out", checkpoint]) == 0
    return checkpoint


def kernel_environment(tmp_path, monkeypatch) -> None:
    """A kernel spec running this interpreter, CPU-only JAX with two devices, and no network use."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": KERNEL, "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PYTHONPATH", ROOT)  # the working tree's sfv_jax, as in this process


def read_video(path: str) -> np.ndarray:
    import imageio.v2 as imageio
    with imageio.get_reader(path, format="FFMPEG") as reader:
        return np.stack([np.asarray(f) for f in reader])


# The kernel is started with fork + exec after this process imported JAX (safe: exec follows at once).
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_notebook_runs_headless_on_a_tiny_checkpoint(tmp_path, monkeypatch):
    from sfv_jax.demo import synthetic_image

    checkpoint = tiny_checkpoint(str(tmp_path))
    image_path = str(tmp_path / "input.png")
    synthetic_image(50, 70, seed=3).save(image_path)
    output = str(tmp_path / "out" / "clip.mp4")
    nb = read_notebook()
    inject_parameters(nb, dict(checkpoint=checkpoint, image=image_path, output_path=output, num_frames=3,
                               height=64, width=48, num_videos=2, seed=1, install=False,
                               compilation_cache=str(tmp_path / "jax_cache")))
    kernel_environment(tmp_path, monkeypatch)
    workdir = tmp_path / "cwd"
    workdir.mkdir()

    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=600,
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute()

    for path in (output, str(tmp_path / "out" / "clip_1.mp4")):
        assert os.path.getsize(path) > 0, path
        frames = read_video(path)
        assert frames.shape == (3, 64, 48, 3), (path, frames.shape)
    assert os.path.getsize(str(tmp_path / "out" / "clip.contact.png")) > 0

    def text_of(cell) -> str:
        parts = []
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.append(out.get("data", {}).get("text/markdown", ""))
        return "".join(parts)

    outputs = "\n".join(text_of(c) for c in nb.cells)
    assert "2 video(s): batch split over the 2 device(s)" in outputs, outputs
    assert "**2 x cpu** (cpu" in outputs and "| UNet, 1 step |" in outputs, outputs  # the timing table
    assert "video/mp4" in json.dumps([c.get("outputs", []) for c in nb.cells])  # shown inline


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_notebook_runs_the_shipped_toy_student(tmp_path, monkeypatch):
    """checkpoint="toy" loads models/toy/student from the checkout (no hub, no network) and makes clips of the toy
    model's own shape (8 frames of 64x64) whatever num_frames / height / width say. Catches a "toy" that goes to the
    hub, or that keeps the parameters cell's SVD size (which the toy model cannot make)."""
    from sfv_jax.demo import synthetic_image

    image_path = str(tmp_path / "input.png")
    synthetic_image(50, 70, seed=3).save(image_path)
    output = str(tmp_path / "out" / "clip.mp4")
    nb = read_notebook()
    inject_parameters(nb, dict(checkpoint="toy", image=image_path, output_path=output, num_frames=14,
                               height=576, width=1024, num_videos=1, seed=1, install=False,
                               compilation_cache=str(tmp_path / "jax_cache")))
    kernel_environment(tmp_path, monkeypatch)
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=600, resources={"metadata": {"path": ROOT}})
    client.execute()
    assert read_video(output).shape == (8, 64, 64, 3)
