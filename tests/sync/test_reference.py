"""fda.sync.reference: w0 and its buffers, and the update direction xi."""
import torch

from fda.sync.reference import GlobalReference, initial_xi


def test_params_is_a_view_of_the_flat_model(seeded):
    model = torch.randn(10, generator=seeded)
    ref = GlobalReference(model, 6, seed=0, with_xi=False)
    assert ref.params.numel() == 6 and ref.params.data_ptr() == ref.flat.data_ptr()
    assert torch.equal(ref.flat, model) and ref.flat.data_ptr() != model.data_ptr()  # a copy
    assert ref.xi is None


def test_initial_xi_is_a_seeded_unit_vector():
    a, b, c = initial_xi(3, 50, torch.device("cpu")), initial_xi(3, 50, torch.device("cpu")), initial_xi(4, 50, torch.device("cpu"))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs(float(a.norm()) - 1.0) < 1e-6


def test_normalise_xi_makes_the_update_a_direction():
    ref = GlobalReference(torch.zeros(4), 4, seed=0, with_xi=True)
    ref.xi.copy_(torch.tensor([3.0, 0.0, 4.0, 0.0]))
    ref.normalise_xi()
    assert torch.equal(ref.xi, torch.tensor([0.6, 0.0, 0.8, 0.0]))


def test_a_global_model_that_did_not_move_falls_back_to_the_seeded_direction():
    ref = GlobalReference(torch.zeros(4), 4, seed=5, with_xi=True)
    ref.xi.zero_()
    ref.normalise_xi()
    assert torch.equal(ref.xi, initial_xi(5, 4, torch.device("cpu")))


def test_state_dict_round_trip(seeded):
    a = GlobalReference(torch.randn(8, generator=seeded), 8, seed=1, with_xi=True)
    a.xi.copy_(torch.randn(8, generator=seeded))
    b = GlobalReference(torch.zeros(8), 8, seed=1, with_xi=True)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.flat, b.flat) and torch.equal(a.xi, b.xi)
    assert b.params.data_ptr() == b.flat.data_ptr()  # loaded in place: the view still holds
