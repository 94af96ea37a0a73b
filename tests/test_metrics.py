"""metrics.jsonl stays strict JSON, whole lines only, with no duplicated steps after a resume."""

import json
import math
import os

import pytest

from ssl_zoo import metrics
from ssl_zoo.metrics import MetricsLogger


def strict_records(path) -> list[dict]:
    """Parse as standard JSON: bare NaN/Infinity (Python's extension) is an error."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def write_log(path, steps, tail: str = "") -> None:
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in steps) + tail)


def test_non_finite_values_are_written_as_null(tmp_path):
    logger = MetricsLogger(tmp_path, True)
    logger.log(1, {"loss": math.nan, "grad_norm": math.inf, "lr": 0.1})
    logger.close()
    assert strict_records(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": None, "grad_norm": None, "lr": 0.1}]


def test_each_record_is_appended_by_one_write_of_a_whole_line(tmp_path, monkeypatch):
    writes = []
    real_write = os.write

    def spy(fd, data):
        writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(metrics.os, "write", spy)
    logger = MetricsLogger(tmp_path, True)
    for step in (1, 2):
        logger.log(step, {"loss": 0.5, "lr": 0.1})
        assert strict_records(tmp_path / "metrics.jsonl")[-1]["step"] == step  # on disk when log returns
    logger.close()
    assert [json.loads(w)["step"] for w in writes] == [1, 2]
    assert all(w.endswith(b"\n") and w.count(b"\n") == 1 for w in writes)


def test_a_cut_short_last_line_is_dropped_with_a_warning_on_resume(tmp_path):
    log = tmp_path / "metrics.jsonl"
    write_log(log, range(1, 6), tail='{"step": 6, "lo')
    with pytest.warns(UserWarning, match="dropped its unparsable last line"):
        logger = MetricsLogger(tmp_path, True, resume_step=4)
    logger.log(5, {"loss": 0.2})
    logger.close()
    assert [r["step"] for r in strict_records(log)] == [1, 2, 3, 4, 5]


def test_an_unparsable_middle_line_is_kept(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    MetricsLogger(tmp_path, True, resume_step=2).close()
    assert log.read_text() == '{"step": 1}\nnot json\n{"step": 2}\n'


def test_a_run_that_starts_over_drops_the_steps_it_redoes(tmp_path):
    """Killed before its first checkpoint: the restart logs steps 1.. again, so the old ones go."""
    log = tmp_path / "metrics.jsonl"
    write_log(log, [1, 2, 3])
    logger = MetricsLogger(tmp_path, True, resume_step=0)
    logger.log(1, {"loss": 0.3})
    logger.close()
    assert [r["step"] for r in strict_records(log)] == [1]


def test_readers_pass_over_a_line_being_written(tmp_path):
    """`ssl-zoo jobs` and hub export read metrics.jsonl while a run may be appending to it."""
    from ssl_zoo.launch.status import last_metrics
    from ssl_zoo.metrics import read_metrics

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "knn_top1": 50.0}\n{"step": 3, "lo')
    assert read_metrics(log) == [{"step": 1, "loss": 2.0}, {"step": 2, "knn_top1": 50.0}]
    assert last_metrics(tmp_path) == (2, 2.0)
