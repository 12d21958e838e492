"""Weights kept along a grok run load into the CLI's model of the same name."""
import torch

from lcfast.cli import build_model
from lcfast.train import experiments
from lcfast.train.models import mlp
from lcfast.train.tracker import log_schedule
from test_train_tracker import _tiny, mnist_root  # noqa: F401  (fixture)


def test_grok_keeps_weights_that_measure_loads(tmp_path, mnist_root):  # noqa: F811
    cfg = _tiny(mnist_root, width=200, steps=6, n_logs=4)
    experiments.run_grok(cfg, tmp_path, plot=False, progress=False)
    steps = log_schedule(6, 4)
    kept = sorted(p.name for p in (tmp_path / "weights").iterdir())
    assert kept == [experiments.weights_path(tmp_path, s).name for s in steps]
    final = torch.load(tmp_path / "ckpt.pt", weights_only=False)["model"]  # the model at step 6
    model = build_model("mnist-mlp", str(experiments.weights_path(tmp_path, steps[-1])))
    ref = mlp()
    ref.load_state_dict(final)
    x = torch.rand(5, 1, 28, 28)
    assert torch.equal(model(x), ref(x.flatten(1)))
    # the first kept step is the initial model, different from the final one
    first = build_model("mnist-mlp", str(experiments.weights_path(tmp_path, steps[0])))
    assert not torch.equal(first(x), model(x))
    # and the series reader finds them in step order (lcfast measure --checkpoints)
    from lcfast.series import checkpoint_files
    found = checkpoint_files(str(tmp_path / "weights" / "step-*.pt"))
    assert [s for s, _ in found] == list(steps)
