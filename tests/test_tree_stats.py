"""sfv_jax.train.tree_stats: the train steps' whole-tree norm, finiteness check and clipping."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sfv_jax.train import tree_stats


def _tree(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"a": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
            "b": [jnp.asarray(rng.normal(size=(5,)), jnp.bfloat16), jnp.asarray(rng.normal(size=()), jnp.float32)],
            "c": {"d": jnp.asarray(rng.normal(size=(2, 2, 3)) * 100.0, jnp.float32)}}


def test_global_norm_equals_optax():
    """Catches: a norm that drops a leaf, squares without summing, or sums the bf16 leaf in bf16 (bound 1e-6 rel)."""
    tree = _tree()
    expected = np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree)))
    got = float(jax.jit(tree_stats.global_norm)(tree))
    assert abs(got - expected) <= 1e-6 * expected
    assert abs(float(optax.global_norm(tree)) - got) <= 1e-3 * expected  # optax sums the bf16 leaf in bf16
    assert float(tree_stats.global_norm({})) == 0.0


def test_global_norm_keeps_float64_leaves_in_float64():
    """Catches: partials cast to float32 whatever the leaf dtype, which rounds a float64 run's norm (and so its
    clipping) to ~1e-7 relative (the float64 sharded-vs-single-device step tests then differ by ~5e-8)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        tree = [jnp.asarray(rng.normal(size=(7, 3)) * 10.0 ** k, jnp.float64) for k in range(-3, 4)]
        tree.append(jnp.asarray(rng.normal(size=(4,)), jnp.float32))
        expected = np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in tree))
        got = jax.jit(tree_stats.global_norm)(tree)
        assert got.dtype == jnp.float64
        assert abs(float(got) - expected) <= 1e-13 * expected


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", ["a", "b16", "c"])
def test_all_finite_finds_one_bad_element_in_any_leaf(bad, where):
    """Catches: a check that looks at some leaves only (the first, the float32 ones), or tests NaN but not inf."""
    tree = _tree()
    check = jax.jit(tree_stats.all_finite)
    assert bool(check(tree))
    if where == "a":
        tree["a"] = tree["a"].at[2, 3].set(bad)
    elif where == "b16":
        tree["b"][0] = tree["b"][0].at[4].set(bad)
    else:
        tree["c"]["d"] = tree["c"]["d"].at[1, 0, 2].set(bad)
    assert not bool(check(tree))


def test_all_finite_ignores_integer_leaves_and_empty_trees():
    """Catches: isfinite applied to an integer leaf (the step counter, rng keys), or an error on an empty tree."""
    assert bool(tree_stats.all_finite({"step": jnp.asarray(3, jnp.int32), "x": jnp.ones(2)}))
    assert bool(tree_stats.all_finite({}))


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_by_global_norm_equals_optax(max_norm):
    """Catches: clipping that scales when under the bound, or scales to a different norm than optax's."""
    tree = {k: v for k, v in _tree(1).items() if k != "b"}  # float32 leaves: optax's norm is exact there
    ours, _ = tree_stats.clip_by_global_norm(max_norm).update(tree, optax.EmptyState())
    theirs, _ = optax.clip_by_global_norm(max_norm).update(tree, optax.EmptyState())
    for x, y in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6)


def test_many_leaves_compile_without_one_giant_fusion():
    """Catches: the per-leaf partials combined as a chain (`sum(... for x in leaves)`), which XLA:CPU fuses into one
    fusion of ~2 instructions per leaf and compiles in time superlinear in the leaf count (module docstring)."""
    leaves = [jax.ShapeDtypeStruct((4, 1 + i % 7), jnp.float32) for i in range(300)]
    both = lambda tree: (tree_stats.global_norm(tree), tree_stats.all_finite(tree))
    text = jax.jit(both).lower(leaves).compile().as_text()
    largest = max(block.count("\n") for block in text.split("\n\n") if block.lstrip().startswith("%fused"))
    assert largest < 100, f"largest fusion has {largest} lines"
