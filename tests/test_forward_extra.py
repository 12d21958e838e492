"""``forward=`` and per-point ``extra=`` inputs (issue 11 item 6): models whose forward
takes keyword inputs, with an attention mask per point."""
import json

import pytest
import torch
import torch.nn as nn

import lcfast

T, E = 4, 3


class KwModel(nn.Module):
    """``forward(*, pixel_values, attention_mask)``: a ReLU MLP on ``T`` tokens, pooled
    over the tokens the mask keeps, then a ReLU head (a site the mask changes)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.tok = nn.Linear(E, 6)
        self.head = nn.Linear(6, 5)

    def forward(self, *, pixel_values, attention_mask):
        z = torch.relu(self.tok(pixel_values.view(-1, T, E))) * attention_mask.unsqueeze(-1)
        pooled = z.sum(1) / attention_mask.sum(1, keepdim=True).clamp_min(1)
        return torch.relu(self.head(pooled))


def call_kw(model, batch, **extra):
    """``--forward test_forward_extra:call_kw``: all tokens kept."""
    return model(pixel_values=batch, attention_mask=extra.get("attention_mask",
                                                               torch.ones(batch.shape[0], T, dtype=batch.dtype)))


class FixedMask(nn.Module):
    """One point's mask hard-coded: the truth for that point."""

    def __init__(self, model, mask):
        super().__init__()
        self.model, self.mask = model, mask

    def forward(self, v):
        return self.model(pixel_values=v, attention_mask=self.mask.expand(v.shape[0], -1))


def points(n=5):
    g = torch.Generator().manual_seed(1)
    x = 0.3 * torch.randn(n, T * E, generator=g)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 1]])[:n]
    return x, mask


def kw(model, v, **e):
    return model(pixel_values=v, **e)


@pytest.mark.parametrize("backend", [b for b in ("reference", "native") if b in lcfast.available_backends("cpu")])
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_keyword_model_with_a_mask_per_point(backend, chunk_size):
    model = KwModel()
    x, mask = points()
    res = lcfast.local_complexity(model, x, radius=0.2, n_dirs=3, forward=kw, extra={"attention_mask": mask},
                                  backend=backend, chunk_size=chunk_size, dtype=torch.float64)
    assert res.sites == ["relu#1", "relu#2"] and res.neurons.tolist() == [T * 6, 5]
    truth = torch.cat([lcfast.local_complexity(FixedMask(model, mask[i:i + 1]), x[i:i + 1], radius=0.2, n_dirs=3,
                                               ids=[i], backend="reference", dtype=torch.float64).counts
                       for i in range(x.shape[0])])
    assert torch.equal(res.counts, truth)
    # the masks matter: one mask for all points counts differently
    same = lcfast.local_complexity(model, x, radius=0.2, n_dirs=3, forward=kw,
                                   extra={"attention_mask": torch.ones_like(mask)}, dtype=torch.float64)
    assert not torch.equal(same.counts, truth)


def test_no_point_with_extra():
    x, mask = points()
    res = lcfast.local_complexity(KwModel(), x[:0], n_dirs=2, forward=kw, extra={"attention_mask": mask[:0]})
    assert res.counts.shape == (0, 2)


def test_bad_forward_and_extra():
    x, mask = points()
    with pytest.raises(ValueError, match=r"extra\['attention_mask'\]"):
        lcfast.local_complexity(KwModel(), x, n_dirs=2, forward=kw, extra={"attention_mask": mask[:2]})
    with pytest.raises(TypeError, match="extra"):
        lcfast.local_complexity(KwModel(), x, n_dirs=2, forward=kw, extra=[mask])
    with pytest.raises(TypeError, match="forward"):
        lcfast.local_complexity(KwModel(), x, n_dirs=2, forward="pixel_values")


def test_tracker_forward_and_extra():
    from lcfast.train.tracker import LCTracker
    model = KwModel()
    x, mask = points()
    tracker = LCTracker(model, {"train": x}, radius=0.2, n_dirs=3, schedule=[0], forward=kw,
                        extra={"train": {"attention_mask": mask}}, cache_frames=False)
    rec = tracker.log(0)
    res = lcfast.local_complexity(model, x, radius=0.2, n_dirs=3, forward=kw, extra={"attention_mask": mask})
    assert rec["lc"]["train"]["0.2"]["mean"] == pytest.approx(res.total.double().mean().item())
    with pytest.raises(ValueError, match="extra"):
        LCTracker(model, {"train": x}, forward=kw, extra={"test": {"attention_mask": mask}})


def test_measure_dataset_passes_forward_and_extra():
    from lcfast.scale import measure_dataset
    model = KwModel()
    x, mask = points()
    res = measure_dataset(model, x, block_size=2, radius=0.2, n_dirs=3, forward=kw, extra={"attention_mask": mask})
    ref = lcfast.local_complexity(model, x, radius=0.2, n_dirs=3, forward=kw, extra={"attention_mask": mask})
    assert torch.equal(res.counts, ref.counts)


def test_cli_forward(tmp_path):
    from lcfast.cli import main
    torch.save(points()[0], tmp_path / "x.pt")
    out = tmp_path / "o.json"
    rc = main(["--model", "test_forward_extra:KwModel", "--forward", "test_forward_extra:call_kw",
               "--data", str(tmp_path / "x.pt"), "--points", "5", "--dirs", "2", "--radius", "0.2",
               "--out", str(out), "--no-progress", "--backend", "reference"])
    assert rc == 0
    saved = json.loads(out.read_text())
    assert len(saved["counts"]) == 5 and saved["sites"] == ["relu#1", "relu#2"]
