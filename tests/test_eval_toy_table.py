"""The toy table's goals (sfv_jax/eval/toy_table.py) judged from row results: pure Python, no models."""

from __future__ import annotations

from sfv_jax.eval.toy_table import ROWS, goals, markdown, rows_for, stale_reason


def result(fvd, share=0.9, speed=0.1):
    return {"fvd": fvd, "motion_coherent_share": share, "speed_distance": speed, "seconds_per_clip": 0.5,
            "unet_seconds_per_clip": 0.1}


def table(student1=100.0, teacher25=95.0, teacher1=400.0, spatial=150.0, temporal=160.0, share_s=0.9, share_t=0.9):
    return {("teacher", 25): result(teacher25, share_t), ("teacher", 1): result(teacher1),
            ("student", 1): result(student1, share_s), ("student_spatial", 1): result(spatial),
            ("student_temporal", 1): result(temporal)}


def test_goals_are_judged_as_stated_and_never_met_by_a_missing_row():
    """Catches a goal compared in the wrong direction (a student WORSE than the teacher by more than 10% passing,
    a lower share passing), a 2x goal read as 1x, an ablation goal that needs beating only one ablation, and a
    missing row counted as met."""
    met = lambda t: [g["met"] for g in goals(t)]
    assert met(table()) == [True, True, True]
    assert met(table(student1=104.0, teacher25=95.0))[0] is True  # 1.095x FVD: within 10%
    assert met(table(student1=105.0, teacher25=95.0))[0] is False  # 1.105x
    assert met(table(share_s=0.80, share_t=0.9))[0] is False  # the share fell by 11%
    assert met(table(student1=80.0, teacher25=95.0, share_s=1.0))[0] is True  # better than the teacher is fine
    assert met(table(teacher1=199.0))[1] is False and met(table(teacher1=200.0))[1] is True
    assert met(table(spatial=150.0, temporal=90.0))[2] is False
    partial = {k: v for k, v in table().items() if k != ("student_temporal", 1)}
    assert met(partial) == [True, True, None]
    assert [g["met"] for g in goals({})] == [None, None, None]


def test_markdown_lists_the_rows_given_and_says_which_goals_are_not_met():
    """Catches rows dropped or invented and an unmet goal printed as met."""
    text = markdown(table(teacher1=150.0), "settings line")
    assert text.startswith("settings line\n")
    assert "| teacher, 25 steps (Euler + CFG) | 95.0 | 90.0% |" in text
    assert "teacher, 16 steps" not in text  # no result for it
    assert "| teacher at 1 step at least 2x worse than the student at 1 step | **no** |" in text
    assert [r.model for r in rows_for({"teacher"})] == ["teacher"] * 6
    assert len(ROWS) == 11


def test_a_saved_row_is_reused_only_for_the_same_weights_clip_count_and_seed():
    """Catches a table kept across sessions that mixes an old model's row with a new model's (the teacher retrained,
    the row kept), or reuses a 32-clip pilot row in the 256-clip table, or another seed's row."""
    saved = {**result(100.0), "checkpoint_fingerprint": "sha256:aa", "num_clips": 256, "seed": 0}
    assert stale_reason(saved, "sha256:aa", 256, 0) is None
    assert stale_reason(None, "sha256:aa", 256, 0) == "not computed yet"
    assert "checkpoint_fingerprint" in stale_reason(saved, "sha256:bb", 256, 0)
    assert "num_clips" in stale_reason(saved, "sha256:aa", 32, 0)
    assert "seed" in stale_reason(saved, "sha256:aa", 256, 1)
    assert "checkpoint_fingerprint" in stale_reason(result(100.0), "sha256:aa", 256, 0)  # a row from before fingerprints


def test_rows_of_models_not_given_are_reported_as_saved_only_for_the_tables_clips_and_seed(tmp_path):
    """The ablation students are not shipped, so a later table (--saved-only) reports their saved rows as saved.
    Catches a given model's row taken unchecked from disk (it must go through stale_reason), and a saved row of
    another clip count or seed slipped into the table."""
    import json

    from sfv_jax.eval.toy_table import rows_saved_without_weights

    def save(name, num_clips, seed):
        (tmp_path / f"{name}.json").write_text(json.dumps({**result(1.0), "num_clips": num_clips, "seed": seed}))

    save("student_spatial_1", 256, 0)
    save("student_temporal_1", 32, 0)  # a pilot's row
    save("student_1", 256, 0)  # a given model's row: not this function's
    found = rows_saved_without_weights(str(tmp_path), {"teacher", "student"}, 256, 0)
    assert set(found) == {("student_spatial", 1)}
    assert rows_saved_without_weights(str(tmp_path), {"teacher", "student"}, 256, 1) == {}
    assert rows_saved_without_weights(str(tmp_path), {"student_spatial"}, 256, 0).keys() == {("student", 1)}


def test_a_damaged_saved_row_is_a_one_line_error_naming_its_file(tmp_path):
    """A truncated row file (a run stopped mid-write by hand, a bad merge) must stop the table with one line naming
    the file, not a JSONDecodeError traceback, and a row that is JSON but not an object is refused the same way.
    Catches the rows read with a bare json.load."""
    import pytest

    from sfv_jax.errors import CheckpointError
    from sfv_jax.eval.toy_table import rows_saved_without_weights

    path = tmp_path / "student_spatial_1.json"
    for text, why in (('{"fvd": 75', "not valid JSON"), ("[1, 2]", "expected a JSON object")):
        path.write_text(text)
        with pytest.raises(CheckpointError) as error:
            rows_saved_without_weights(str(tmp_path), {"teacher", "student"}, 256, 0)
        message = str(error.value)
        assert "\n" not in message and str(path) in message and why in message, message


def test_a_card_gets_the_table_between_its_markers_and_nothing_else_changes():
    """The model cards carry the table (tools/toy_table.py --cards). Catches the table appended instead of
    replacing the old one (a second run would hold two tables), text outside the markers touched, and a card
    without markers (or with them twice or reversed) rewritten by guess instead of refused."""
    import pytest

    from sfv_jax.eval.toy_table import CARD_TABLE_END, CARD_TABLE_START, with_table

    card = f"# card\n\nabove\n{CARD_TABLE_START}\nold table\n{CARD_TABLE_END}\nbelow\n"
    once = with_table(card, "| new |\n")
    assert once == f"# card\n\nabove\n{CARD_TABLE_START}\n| new |\n{CARD_TABLE_END}\nbelow\n"
    assert with_table(once, "| new |\n") == once
    for broken in ("# card\nno markers\n", card + CARD_TABLE_START + "\n",
                   f"{CARD_TABLE_END}\nx\n{CARD_TABLE_START}\n"):
        with pytest.raises(ValueError, match="models/x/README.md: needs the line"):
            with_table(broken, "| new |", "models/x/README.md")
