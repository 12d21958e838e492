"""`lcfast partition` and `lcfast deform`."""
import json

from lcfast.cli import main


def test_partition_and_deform_commands(tmp_path, capsys):
    out = tmp_path / "p.png"
    assert main(["partition", "--data", "random", "--extent", "-0.02", "0.02", "-0.02", "0.02", "--layerwise",
                 "--lc-grid", "12", "--radius", "0.01", "0.1", "--dirs", "3", "--out", str(out)]) == 0
    for f in ("p.png", "p-layers.png", "p-lc.png"):
        assert (tmp_path / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    counts = json.loads((tmp_path / "p.json").read_text())
    assert counts["regions"] >= 1 and set(counts["crossed"]) == {"1.1#1", "1.3#1", "1.5#1", "1.7#1"}
    assert set(counts["lc_grid_mean"]) == {"0.01", "0.1"}
    assert "regions in" in capsys.readouterr().out
    d = tmp_path / "d.png"
    assert main(["deform", "--data", "random", "--points", "3", "--dirs", "3", "--radius", "0.01", "0.1",
                 "--out", str(d)]) == 0
    res = json.loads((tmp_path / "d.json").read_text())
    assert len(res["eccentricity"]) == 2 and len(res["eccentricity"][0]) == 4
    assert main(["partition", "--points", "0", "0", "1"]) == 2  # clear error, exit code 2
