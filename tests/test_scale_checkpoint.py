"""measure_dataset checkpoints are tied to the measurement: other weights, data, settings,
backend or frame generator are refused (naming what differs) or started afresh."""
import copy
import json

import pytest
import torch

import lcfast
from lcfast import frames
from lcfast.fingerprint import data_digest, measurement_fingerprint, model_digest
from lcfast.scale import measure_dataset
import zoo

KW = dict(radius=0.3, n_dirs=3, backend="reference")


def data():
    return torch.randn(23, 20, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def done(tmp_path):
    """A finished checkpoint of zoo.mlp() over data()."""
    ck = str(tmp_path / "ck")
    measure_dataset(zoo.mlp(), data(), block_size=5, checkpoint=ck, **KW)
    return ck


def test_other_weights_refused_then_overwritten(done):
    model = zoo.mlp()
    tripled = copy.deepcopy(model)
    with torch.no_grad():
        for p in tripled.parameters():
            p.mul_(3)
    before = {k: v.clone() for k, v in tripled.state_dict().items()}
    with pytest.raises(ValueError, match="model weights") as e:
        measure_dataset(tripled, data(), block_size=5, checkpoint=done, **KW)
    assert "overwrite=True" in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in tripled.state_dict().items())
    res = measure_dataset(tripled, data(), block_size=5, checkpoint=done, overwrite=True, **KW)
    plain = lcfast.local_complexity(tripled, data(), **KW)
    assert torch.equal(res.counts, plain.counts)
    assert not torch.equal(plain.counts, lcfast.local_complexity(model, data(), **KW).counts)
    # the checkpoint now belongs to the tripled model: it is reused, the original refused
    assert torch.equal(measure_dataset(tripled, data(), block_size=5, checkpoint=done, **KW).counts, plain.counts)
    with pytest.raises(ValueError, match="model weights"):
        measure_dataset(model, data(), block_size=5, checkpoint=done, **KW)


def test_buffer_and_module_type_changes_refused(done):
    swapped = zoo.mlp(act=torch.nn.GELU)  # same parameters, other activation
    with pytest.raises(ValueError, match="model weights"):
        measure_dataset(swapped, data(), block_size=5, checkpoint=done, **KW)
    withbuf = zoo.mlp()
    withbuf.register_buffer("scale", torch.ones(1))
    assert model_digest(withbuf) != model_digest(zoo.mlp())
    withbuf.scale.fill_(2)
    b2 = model_digest(withbuf)
    withbuf.scale.fill_(1)
    assert model_digest(withbuf) != b2


def test_other_data_refused(done):
    x = data()
    x[22, 3] += 1  # the last item is always probed
    with pytest.raises(ValueError, match="data"):
        measure_dataset(zoo.mlp(), x, block_size=5, checkpoint=done, **KW)
    with pytest.raises(ValueError, match="data"):
        measure_dataset(zoo.mlp(), data()[:22], block_size=5, checkpoint=done, **KW)
    assert data_digest(data()) == data_digest(torch.utils.data.TensorDataset(data(), torch.zeros(23)))


@pytest.mark.parametrize("change, named", [
    (dict(radius=0.1), "radius=0.3"),
    (dict(seed=1), "seed=0"),
    (dict(sites=[torch.nn.ReLU]), "sites="),
    (dict(backend="native"), "backend"),
    (dict(dtype=torch.float64), "dtype="),
])
def test_other_settings_refused_with_their_name(done, change, named):
    with pytest.raises(ValueError, match=named):
        measure_dataset(zoo.mlp(), data(), block_size=5, checkpoint=done, **{**KW, **change})


def test_blocking_and_frames_version_refused(done, monkeypatch):
    with pytest.raises(ValueError, match="block_size=5"):
        measure_dataset(zoo.mlp(), data(), block_size=4, checkpoint=done, **KW)
    monkeypatch.setattr(frames, "FRAMES_VERSION", frames.FRAMES_VERSION + "-changed")
    with pytest.raises(ValueError, match="frame generator"):
        measure_dataset(zoo.mlp(), data(), block_size=5, checkpoint=done, **KW)


def test_explicit_defaults_match(done):
    """radius=0.3 was explicit; the defaults written out (and the model's dtype for
    dtype=None, an int radius-like float, chunk_size) make the same measurement."""
    seen = []

    class Counting(torch.utils.data.TensorDataset):
        def __getitems__(self, idx):
            seen.extend(idx)
            return [self[i] for i in idx]

    res = measure_dataset(zoo.mlp(), Counting(data()), block_size=5, checkpoint=done, seed=0, n_dirs=3,
                          radius=0.3, sites="activations", dtype=torch.float32, backend="reference",
                          shared_directions=False, chunk_size=2)
    assert seen == []  # everything came from the checkpoint
    assert torch.equal(res.counts, lcfast.local_complexity(zoo.mlp(), data(), **KW).counts)
    a = measurement_fingerprint(zoo.mlp(), data(), dict(radius=1))
    b = measurement_fingerprint(zoo.mlp(), data(), dict(radius=1.0, n_dirs=25, seed=0))
    assert a == b


def test_old_format_refused(tmp_path):
    ck = str(tmp_path / "ck")
    with open(ck + ".rank0.jsonl", "w") as f:
        f.write(json.dumps({"fingerprint": "0123456789abcdef", "lo": 0, "hi": 5, "result": {}}) + "\n")
    with pytest.raises(ValueError, match="older lcfast checkpoint"):
        measure_dataset(zoo.mlp(), data(), block_size=5, checkpoint=ck, **KW)


def test_fingerprint_bad_settings():
    with pytest.raises(TypeError, match="settings"):
        measurement_fingerprint(zoo.mlp(), data(), dict(radiuss=0.1))


def test_damaged_checkpoint_refused_then_overwritten(done):
    path = done + ".rank0.jsonl"
    lines = open(path).read().splitlines()
    lines[2] = lines[2][:40]  # an older lcfast appended after a torn line: damage mid-file
    open(path, "w").write("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="line 3 .*overwrite=True"):
        measure_dataset(zoo.mlp(), data(), block_size=5, checkpoint=done, **KW)
    res = measure_dataset(zoo.mlp(), data(), block_size=5, checkpoint=done, overwrite=True, **KW)
    assert torch.equal(res.counts, lcfast.local_complexity(zoo.mlp(), data(), **KW).counts)
    assert len(open(path).read().splitlines()) == 1 + 5


def test_cli_resume_keeps_blocks_and_refuses_other_settings(tmp_path, capsys):
    """`lcfast measure --resume PREFIX`: the blocks land in PREFIX.rank0.jsonl, a rerun
    reads them back (same counts, file not grown), other settings are refused."""
    import json
    from lcfast.cli import main
    args = ["measure", "--model", "mnist-mlp", "--data", "random", "--points", "5", "--dirs", "3", "--radius", "0.1",
            "--backend", "reference", "--block-size", "2", "--no-progress", "--resume", str(tmp_path / "ck")]
    assert main([*args, "--out", str(tmp_path / "a.json")]) == 0
    lines = (tmp_path / "ck.rank0.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 3  # fingerprint + 3 blocks
    assert main([*args, "--out", str(tmp_path / "b.json")]) == 0
    assert (tmp_path / "ck.rank0.jsonl").read_text().splitlines() == lines
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["counts"] == b["counts"] and sum(map(sum, a["counts"])) > 0
    capsys.readouterr()
    assert main([*args, "--radius", "0.2", "--out", str(tmp_path / "c.json")]) == 2
    assert "another measurement" in capsys.readouterr().err
