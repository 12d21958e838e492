"""The interception protocol (lcfast.engine.intercept): what a handler receives and returns."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from lcfast.engine.intercept import SiteHandler, SiteInterceptor, size_batch_dim
from lcfast.engine.reference import crossing_counts
from lcfast.sites import SiteSpec


class Recorder(SiteHandler):
    """Keeps every site it is handed; counts with the reference rule."""

    def __init__(self):
        self.sites, self.calls = [], []

    def count(self, pre, V):
        return crossing_counts(pre, V)

    def handle(self, site, call):
        self.sites.append(site)
        self.calls.append(call)
        return super().handle(site, call)


class SeqFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 5)

    def forward(self, x):  # (B, 18) -> tokens (T=3, B, 6)
        return F.gelu(self.lin(x.view(x.shape[0], 3, 6).transpose(0, 1))).sum(0)


def test_handler_gets_the_untouched_argument_and_its_batch_dim():
    model = SeqFirst()
    v = torch.randn(8, 18)
    handler = Recorder()
    interceptor = SiteInterceptor(model, SiteSpec.resolve(model, "activations"), handler, 8, 4)
    with interceptor, torch.no_grad():
        out = model(v)
    (site,), (call,) = handler.sites, handler.calls
    assert site.value.shape == (3, 8, 5) and site.batch_dim == 1 and site.V == 4 and site.neurons == 15
    assert call.kind == "gelu" and call.args[0] is site.value  # the very tensor the model passed
    assert site.batch_major().shape == (8, 3, 5)
    assert torch.equal(out, model(v))
    assert interceptor.names == ["gelu#1"] and interceptor.neurons == [15]
    assert torch.equal(interceptor.counts(2)[:, 0], crossing_counts(site.batch_major(), 4))


class Tagged(torch.Tensor):
    """A stand-in for another representation of the batch (e.g. centre + offsets)."""


class ByType(Recorder):
    """Recognises the batch by its type, not its size."""

    def batch_dim(self, value, rows):
        return 0 if isinstance(value, Tagged) else None


def test_batch_dim_can_come_from_the_handler_not_the_size():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3), nn.Tanh())
    v = torch.randn(6, 4)
    handler = ByType()
    # rows=-1: no size guess can succeed; the handler decides
    interceptor = SiteInterceptor(model, SiteSpec.resolve(model, "activations"), handler, -1, 2)
    with interceptor, torch.no_grad():
        model(v.as_subclass(Tagged))
    assert interceptor.names == ["1#1", "3#1"]
    assert all(type(s.value) is Tagged for s in handler.sites)
    # a plain tensor is not this handler's batch: no site
    handler2 = ByType()
    with SiteInterceptor(model, SiteSpec.resolve(model, "activations"), handler2, 6, 2), torch.no_grad():
        model(v)
    assert handler2.sites == []


class Doubling(Recorder):
    """Returns its own result: activation sites ReLU twice, module outputs doubled."""

    def handle(self, site, call):
        counts = self.count(site.batch_major(), site.V)
        return (2 * site.value if call is None else 2 * call.run()), counts


def test_handler_output_replaces_the_call_and_the_module_output():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    v = torch.randn(6, 4)
    with torch.no_grad():
        h = model[0](v)
        expect_act = model[2](2 * torch.relu(h))
        with SiteInterceptor(model, SiteSpec.resolve(model, "activations"), Doubling(), 6, 2):
            got_act = model(v)
        with SiteInterceptor(model, SiteSpec.resolve(model, ["0"]), Doubling(), 6, 2):
            got_mod = model(v)
    assert torch.equal(got_act, expect_act)
    assert torch.equal(got_mod, model[2](torch.relu(2 * h)))


def test_add_site_names_like_a_call_of_the_module():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    interceptor = SiteInterceptor(model, SiteSpec.resolve(model, "activations"), Recorder(), 4, 2)
    with interceptor, torch.no_grad():
        name = interceptor.add_site(model[1], torch.tensor([1, 2]), 3)  # a fused kernel's site
        model(torch.randn(4, 4))  # then the module itself
    assert name == "1#1" and interceptor.names == ["1#1", "1#2"] and interceptor.neurons == [3, 3]
    assert interceptor.counts(2)[:, 0].tolist() == [1, 2]


def test_size_batch_dim():
    assert size_batch_dim(torch.zeros(4, 3), 4) == 0
    assert size_batch_dim(torch.zeros(3, 4), 4) == 1
    assert size_batch_dim(torch.zeros(3, 4, 4), 4) is None  # ambiguous
    assert size_batch_dim(torch.zeros(()), 4) is None
