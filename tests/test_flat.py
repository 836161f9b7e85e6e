"""fda.flat: a model's trainable parameters and float32 buffers re-pointed into one flat buffer."""
import pytest
import torch

from fda.flat import FlatModel, local_sum, pairwise_sum_


class WithBuffers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        self.bn = torch.nn.BatchNorm1d(2)
        self.frozen = torch.nn.Parameter(torch.ones(4), requires_grad=False)
        self.register_buffer("scale16", torch.zeros(2, dtype=torch.float16))


def test_parameters_then_float32_buffers_share_one_buffer():
    torch.manual_seed(0)
    m = WithBuffers()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    f = FlatModel(m)
    assert f.num_params == 3 * 2 + 2 + 2 + 2  # lin.weight, lin.bias, bn.weight, bn.bias
    assert f.flat.numel() == f.num_params + 2 + 2  # + running_mean, running_var (not num_batches_tracked)
    assert [n for n, _ in f.layout] == ["lin.weight", "lin.bias", "bn.weight", "bn.bias"]
    assert f.spans[0] == (0, 6) and sum(n for _, n in f.spans) == f.flat.numel()
    for k, v in m.state_dict().items():  # values unchanged by the re-pointing
        assert torch.equal(v, before[k]), k
    f.flat.fill_(3.0)  # the module sees writes into the flat buffer
    assert torch.all(m.lin.weight == 3.0) and torch.all(m.bn.running_var == 3.0)
    assert torch.all(m.frozen == 1.0)  # frozen parameters are left out
    assert f.other_buffers == [m.scale16]
    assert torch.equal(f.params, f.flat[:f.num_params])


def test_rejects_models_it_cannot_average():
    with pytest.raises(ValueError, match="no trainable"):
        FlatModel(torch.nn.Linear(2, 2).requires_grad_(False))
    with pytest.raises(ValueError, match="float32"):
        FlatModel(torch.nn.Linear(2, 2).double())


def test_local_sum_adds_the_hosted_workers():
    a, b = FlatModel(torch.nn.Linear(2, 2)), FlatModel(torch.nn.Linear(2, 2))
    total = local_sum([a, b])
    torch.testing.assert_close(total, a.flat + b.flat)
    assert total.data_ptr() != a.flat.data_ptr()


def test_pairwise_sum_adds_in_a_balanced_tree():
    """((a + b) + (c + d)), the order MPI adds 4 ranks in: not the sequential ((a + b) + c) + d."""
    big = torch.tensor([1e8], dtype=torch.float32)
    one = torch.tensor([1.0], dtype=torch.float32)
    values = [big, one, -big, one]
    assert float(((big + one) + -big) + one) == 1.0  # sequential
    assert float(pairwise_sum_([t.clone() for t in values])) == 0.0  # (1e8 + 1) + (-1e8 + 1) in float32
    five = [torch.tensor([float(i)]) for i in range(5)]
    assert float(pairwise_sum_(five)) == 10.0 and five[0].item() == 10.0  # in place into the first


def test_local_sum_follows_the_same_tree_and_leaves_the_workers_alone():
    workers = [FlatModel(torch.nn.Linear(2, 2)) for _ in range(4)]
    before = [w.flat.clone() for w in workers]
    total = local_sum(workers)
    assert torch.equal(total, pairwise_sum_([b.clone() for b in before]))
    assert all(torch.equal(w.flat, b) for w, b in zip(workers, before))
