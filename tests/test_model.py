import pytest
import torch
from hydra.utils import instantiate

from cnnsweep.errors import UserError
from cnnsweep.model import ConvNet, Dropout, check_budget, count_parameters

from conftest import compose_train

SEED_LAYOUT = ["conv", "conv", "pool", "conv", "conv", "pool", "conv_valid", "conv_valid", "conv_valid"]
SEED_WIDTHS = [10, 20, 10, 10, 10, 10, 120]


def test_seed_cnn_config_has_exactly_18970_parameters():
    model = instantiate(compose_train().model, _convert_="all")
    assert count_parameters(model) == 18_970


def test_seed_cnn_layers_match_the_recipe():
    model = ConvNet(SEED_WIDTHS, SEED_LAYOUT, dropout=0.1)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.padding[0]) for c in convs] == [
        (1, 10, 1),
        (10, 20, 1),
        (20, 10, 1),
        (10, 10, 1),
        (10, 10, 0),
        (10, 10, 0),
        (10, 120, 0),
    ]
    assert all(c.bias is not None for c in convs)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 7
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 2
    dropouts = [m for m in model.modules() if isinstance(m, Dropout)]
    assert len(dropouts) == 7 and all(d.p == 0.1 for d in dropouts)
    linear = model.head[-1]
    assert (linear.in_features, linear.out_features) == (120, 10)


def test_forward_returns_log_probabilities():
    model = ConvNet(SEED_WIDTHS, SEED_LAYOUT).eval()
    out = model(torch.randn(4, 1, 28, 28))
    assert out.shape == (4, 10)
    assert torch.allclose(out.exp().sum(1), torch.ones(4), atol=1e-5)


def test_widths_change_the_parameter_count_and_gap_head_works():
    small = ConvNet([8, 16, 8, 8, 8, 8, 64], SEED_LAYOUT, head="gap")
    assert count_parameters(small) < 18_970
    assert small(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    ("widths", "layout", "dropout", "head", "message"),
    [
        ([10, 20], SEED_LAYOUT, 0.1, "flatten", "has 2 entries but model.layout has 7 convolutions"),
        ([10, 0, 10, 10, 10, 10, 120], SEED_LAYOUT, 0.1, "flatten", "positive integers"),
        (SEED_WIDTHS, SEED_LAYOUT, 1.0, "flatten", "model.dropout=1.0 is outside [0, 1)"),
        (SEED_WIDTHS, SEED_LAYOUT, 0.1, "avg", "model.head='avg' is unknown"),
        ([4], ["conv5x5"], 0.1, "flatten", "unknown layer(s) ['conv5x5']"),
        ([4], ["conv"] + ["pool"] * 5, 0.1, "flatten", "shrinks a 28x28 image to nothing"),
    ],
)
def test_bad_architectures_are_refused_with_the_value(widths, layout, dropout, head, message):
    with pytest.raises(UserError) as error:
        ConvNet(widths, layout, dropout=dropout, head=head)
    assert message in str(error.value)


def test_budget_check_names_count_and_budget():
    check_budget(18_970, 20_000)
    check_budget(18_970, None)
    with pytest.raises(UserError) as error:
        check_budget(25_001, 20_000)
    assert "25,001 parameters" in str(error.value) and "20,000" in str(error.value)


def test_dropout_keeps_values_with_probability_1_minus_p_and_rescales_them():
    torch.manual_seed(0)
    x = torch.ones(200_000, requires_grad=True)
    dropout = Dropout(0.1)
    out = dropout(x)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.003
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / 0.9))
    out.sum().backward()
    assert torch.equal(x.grad != 0, kept) and torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.9))
    assert torch.equal(dropout.eval()(x), x) and torch.equal(Dropout(0.0).train()(x), x)
