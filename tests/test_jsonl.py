"""lcfast.jsonl: torn last lines are skipped by the reader and cut by the writer."""
import math

import pytest

from lcfast import jsonl


def _bytes(p):
    return open(p, "rb").read()


def test_round_trip_and_nan(tmp_path):
    p = tmp_path / "a.jsonl"
    jsonl.start(p, {"meta": {"x": 1}})
    jsonl.append(p, {"step": 0, "v": math.nan}, {"step": 1, "v": math.inf})
    recs = jsonl.read(p)
    assert recs[0] == {"meta": {"x": 1}} and recs[2] == {"step": 1, "v": math.inf}
    assert math.isnan(recs[1]["v"])
    assert _bytes(p).count(b"\n") == 3
    jsonl.start(p, {"step": 9})  # afresh
    assert jsonl.read(p) == [{"step": 9}]


@pytest.mark.parametrize("torn", ['{"step": 2, "lo', "12", "   ", '{"step": 2}\n{"st'])
def test_torn_tail_skipped_then_cut_by_append(tmp_path, torn):
    p = tmp_path / "a.jsonl"
    jsonl.start(p, {"step": 0}, {"step": 1})
    whole = _bytes(p)
    with open(p, "a") as f:
        f.write(torn)
    expect = [{"step": 0}, {"step": 1}] + ([{"step": 2}] if torn.startswith('{"step": 2}\n') else [])
    assert jsonl.read(p) == expect
    jsonl.append(p, {"step": 3})
    assert jsonl.read(p) == expect + [{"step": 3}]
    if "\n" not in torn:
        assert _bytes(p) == whole + b'{"step": 3}\n'


def test_file_stays_bounded_over_repeated_tears(tmp_path):
    p = tmp_path / "a.jsonl"
    jsonl.start(p, {"meta": 0})
    for k in range(5):
        with open(p, "a") as f:
            f.write('{"step": %d, "torn' % k)
        jsonl.append(p, {"step": k})
    assert jsonl.read(p) == [{"meta": 0}] + [{"step": k} for k in range(5)]
    assert _bytes(p).count(b"\n") == 6 and b"torn" not in _bytes(p)


def test_complete_object_without_newline_is_kept(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'{"a": 1}\n{"b": 2}')
    assert jsonl.read(p) == [{"a": 1}, {"b": 2}]
    assert jsonl.repair(p) == 0 and _bytes(p) == b'{"a": 1}\n{"b": 2}\n'
    jsonl.append(p, {"c": 3})
    assert jsonl.read(p) == [{"a": 1}, {"b": 2}, {"c": 3}]


def test_read_repair_and_long_torn_line(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonl, "_TAIL_STEP", 7)  # the backwards search takes many steps
    p = tmp_path / "a.jsonl"
    jsonl.start(p, {"a": 1})
    with open(p, "a") as f:
        f.write('{"long": "' + "x" * 100)
    assert jsonl.read(p, repair=True) == [{"a": 1}]
    assert _bytes(p) == b'{"a": 1}\n'
    p.write_bytes(b'{"only": "torn')  # no newline anywhere
    assert jsonl.repair(p) == len(b'{"only": "torn') and _bytes(p) == b""
    assert jsonl.read(p) == []
    assert jsonl.repair(tmp_path / "missing.jsonl") == 0


def test_damage_before_the_last_line_is_an_error(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'{"a": 1}\n{"b": \n{"c": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        jsonl.read(p)
    p.write_bytes(b'{"a": 1}\n[1, 2]\n')  # not an object
    with pytest.raises(ValueError, match="line 2"):
        jsonl.read(p)


def test_records_must_be_dicts(tmp_path):
    with pytest.raises(TypeError, match="records"):
        jsonl.append(tmp_path / "a.jsonl", [1, 2])
