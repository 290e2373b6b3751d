import numpy as np
import pytest
import torch

from retrieval.dropout import Dropout


def test_train_mode_drops_about_p_and_keeps_the_mean():
    torch.manual_seed(0)
    layer = Dropout(0.1).train()
    x = torch.ones(400, 500)
    y = layer(x)
    dropped = float((y == 0).float().mean())
    assert abs(dropped - 0.1) < 0.005
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.9))
    assert abs(float(y.mean()) - 1.0) < 0.01


def test_eval_mode_and_zero_p_are_the_identity():
    x = torch.randn(8, 4)
    assert Dropout(0.3).eval()(x) is x
    assert Dropout(0.0).train()(x) is x


def test_masks_follow_the_torch_seed():
    def draw(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        layer = Dropout(0.5).train()
        return torch.cat([layer(torch.ones(3, 64)), layer(torch.ones(3, 64))])

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))
    first = draw(1)
    assert not torch.equal(first[:3], first[3:])  # a fresh mask per call


def test_gradient_flows_through_the_kept_elements_only():
    torch.manual_seed(0)
    x = torch.randn(50, 20, requires_grad=True)
    y = Dropout(0.25).train()(x)
    y.sum().backward()
    kept = (y != 0).float()
    assert torch.allclose(x.grad, kept / 0.75)


def test_state_dict_matches_nn_dropout_and_rejects_bad_p():
    a = torch.nn.Sequential(torch.nn.Linear(3, 3), Dropout(0.1))
    b = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(0.1))
    assert a.state_dict().keys() == b.state_dict().keys()
    b.load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)
    assert np.isclose(Dropout(0.1)._threshold / 65536, 0.1, atol=1 / 65536)
