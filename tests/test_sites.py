"""Which calls are sites and their names."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import lcfast
import zoo


def test_resnet_shared_relu_gives_two_sites_with_stable_names():
    res = lcfast.local_complexity(zoo.resnet18(), torch.randn(1, 3, 32, 32), n_dirs=2, backend="reference")
    assert len(res.sites) == 17
    assert res.sites[:3] == ["relu#1", "layer1.0.relu#1", "layer1.0.relu#2"]
    assert len(set(res.sites)) == 17
    # neurons per site: channel x position, batch excluded
    assert res.neurons[0] == 64 * 16 * 16 and res.neurons[1] == 64 * 8 * 8


def test_functional_activations_are_sites():
    res = lcfast.local_complexity(zoo.functional_net(), torch.randn(2, 10), n_dirs=2, backend="reference")
    assert res.sites == ["relu#1", "tanh#1", "relu#2", "leaky_relu#1", "gelu#1"]
    assert res.neurons.tolist() == [17] * 5


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(4, 6))
        self.act = nn.SiLU()

    def forward(self, x):
        h = self.act(self.block(x))
        h = self.act(h)  # module called twice
        return F.elu(h) + torch.sigmoid(h) + F.softplus(h) + h.sigmoid() + F.hardtanh(h)


def test_all_kinds_and_reuse():
    res = lcfast.local_complexity(Nested(), torch.randn(2, 4), n_dirs=2, backend="reference")
    assert res.sites == ["act#1", "act#2", "elu#1", "sigmoid#1", "softplus#1", "sigmoid#2", "hardtanh#1"]


def test_inplace_activation_keeps_model_output():
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(inplace=True), nn.Linear(8, 8), nn.LeakyReLU(0.2, inplace=True))
    x = torch.randn(3, 5)
    res = lcfast.local_complexity(model, x, n_dirs=2, radius=0.5, backend="reference", sites="activations")
    ref = lcfast.local_complexity(model, x, n_dirs=2, radius=0.5, backend="reference",
                                  sites=["0", "2"])  # pre-activations = Linear outputs
    assert torch.equal(res.counts, ref.counts)


def test_module_output_sites_by_type_and_name():
    model = zoo.mlp()
    x = torch.randn(4, 20)
    by_type = lcfast.local_complexity(model, x, n_dirs=3, radius=0.3, sites=[nn.Linear], backend="reference")
    assert by_type.sites == ["0", "2", "4", "6"]  # logits included, like the paper's code; called once: no "#k"
    assert by_type.neurons.tolist() == [33, 33, 33, 5]
    acts = lcfast.local_complexity(model, x, n_dirs=3, radius=0.3, backend="reference")
    # a Linear output feeding a ReLU is exactly that ReLU's pre-activation
    assert torch.equal(by_type.counts[:, :3], acts.counts)
    by_name = lcfast.local_complexity(model, x, n_dirs=3, radius=0.3, sites=["2", "6"], backend="reference")
    assert torch.equal(by_name.counts, by_type.counts[:, [1, 3]])


class SeqFirst(nn.Module):
    """Tokens laid out (T, B, D): the batch is not in dimension 0."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 9)

    def forward(self, x):  # x (B, T*6)
        h = x.view(x.shape[0], 3, 6).transpose(0, 1)  # (T=3, B, 6)
        return F.gelu(self.lin(h)).sum(0)


def test_batch_not_first():
    x = torch.randn(2, 18)
    model = SeqFirst()
    res = lcfast.local_complexity(model, x, n_dirs=4, radius=0.3, backend="reference")
    assert res.sites == ["gelu#1"] and res.neurons.tolist() == [27]
    res1 = lcfast.local_complexity(model, x[:1], n_dirs=4, radius=0.3, backend="reference")
    assert torch.equal(res1.counts, res.counts[:1])


def test_vit_gelu_sites():
    res = lcfast.local_complexity(zoo.small_vit(), torch.randn(1, 3, 32, 32), n_dirs=2, backend="reference")
    assert res.sites == ["encoder.layers.encoder_layer_0.mlp.1#1", "encoder.layers.encoder_layer_1.mlp.1#1"]
    assert res.neurons.tolist() == [17 * 40, 17 * 40]  # 16 patches + class token, mlp_dim 40


def test_compiled_model_is_measured_through_its_original_module():
    model = zoo.mlp()
    x = torch.randn(3, 20)
    plain = lcfast.local_complexity(model, x, n_dirs=3, radius=0.3, backend="reference")
    compiled = torch.compile(model)
    res = lcfast.local_complexity(compiled, x, n_dirs=3, radius=0.3, backend="reference")
    assert torch.equal(res.counts, plain.counts) and res.sites == plain.sites
    assert "compiled_model" in res.meta
