import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from cnnsweep.errors import UserError, make
from cnnsweep.schema import CONF_DIR, ConfigOptions
from cnnsweep.train.model import (
    Dropout,
    OverBudget,
    build_model,
    check_budget,
    check_outputs,
    count_parameters,
)
from cnnsweep.train.run import models_that_fit

from helpers import SEED_LAYOUT, SEED_WIDTHS, compose_train, seed_cnn


def test_seed_cnn_config_has_exactly_18970_parameters():
    model = instantiate(compose_train().model, _convert_="all")
    assert count_parameters(model) == 18_970


def test_the_tests_seed_layout_and_widths_are_the_yamls():
    model = compose_train().model
    assert (list(model.layout), list(model.widths)) == (SEED_LAYOUT, SEED_WIDTHS)


def test_seed_cnn_layers_match_the_recipe():
    model = seed_cnn(dropout=0.1)
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


def test_forward_returns_logits():
    model = seed_cnn().eval()
    images = torch.randn(4, 1, 28, 28)
    out = model(images)
    assert out.shape == (4, 10)
    assert torch.equal(out, model.head(model.features(images)))  # the classifier's output, no softmax after it
    assert not torch.allclose(out.exp().sum(1), torch.ones(4), atol=1e-2)  # so not log-probabilities


def test_widths_change_the_parameter_count_and_gap_head_works():
    small = seed_cnn(widths=[8, 16, 8, 8, 8, 8, 64], head="gap")
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
        seed_cnn(widths=widths, layout=layout, dropout=dropout, head=head)
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


@pytest.mark.parametrize(
    ("overrides", "shape", "n_params"),
    [
        (["data=mnist"], (1, 28, 10), 18_970),
        (["data=fashion_mnist"], (1, 28, 10), 18_970),
        (["data=kmnist"], (1, 28, 10), 18_970),
        (["data=cifar10"], (3, 32, 10), 19_526),  # cifar10 names the compact network as its model
        (["data=cifar10", "model=tiny"], (3, 32, 10), 7_978),
        (["data=image_folder", "data.root=x", "data.num_classes=5", "data.image_size=64"], (3, 64, 5), 19_381),
        (["data=image_folder", "data.root=x", "data.num_classes=3", "data.in_channels=1"], (1, 32, 3), 19_179),
    ],
)
def test_the_network_follows_the_data(overrides, shape, n_params):
    cfg = compose_train(overrides)
    model = make(cfg.model, _convert_="all")
    channels, size, classes = shape
    assert count_parameters(model) == n_params
    assert model.features[0].in_channels == channels and model.head[-1].out_features == classes
    assert model(torch.zeros(2, channels, size, size)).shape == (2, classes)


def test_the_seed_network_on_cifar10_is_over_budget_and_the_refusal_names_models_that_fit():
    cfg = compose_train(["data=cifar10", "model=seed_cnn"])
    n_params = count_parameters(make(cfg.model, _convert_="all"))
    assert n_params == 22_750  # its flatten head sees 120 x 2 x 2 on 32x32 input
    fitting = models_that_fit(cfg.data, 20_000, ConfigOptions.of_folder(CONF_DIR))
    assert fitting == [("compact", 19_526), ("tiny", 7_978)]
    message = str(OverBudget(n_params, 20_000, fitting))
    assert message == (
        "model has 22,750 parameters, over the budget of 20,000 (for this data, model=compact (19,526), "
        "model=tiny (7,978) fit; or shrink the model (model.widths, for the shipped ones) or raise/disable "
        "budget.max_params)"
    )


def test_a_layout_that_shrinks_the_datas_images_to_nothing_is_refused():
    cfg = compose_train(
        ["data=image_folder", "data.root=x", "data.num_classes=3", "data.image_size=8", "model=seed_cnn"]
    )
    with pytest.raises(UserError, match=r"shrinks a 8x8 image to nothing at position 6 \('conv_valid'\)"):
        make(cfg.model, _convert_="all")


class Wide(nn.Module):
    """A user's model: flatten, then one linear layer to `classes` outputs, optionally softmaxed."""

    def __init__(self, classes: int, softmax: bool = False) -> None:
        super().__init__()
        self.linear = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(28 * 28), nn.Linear(28 * 28, classes))
        self.softmax = softmax

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.linear(images)
        return logits.softmax(1) if self.softmax else logits


class Pair(nn.Module):
    """Returns its input twice, as a model with an auxiliary output would."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


def test_a_model_that_keeps_the_contract_passes_the_output_check_untouched():
    model = Wide(10)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    rng = torch.get_rng_state()
    check_outputs(model, "mynet.Wide", 1, 28, 10)
    assert model.training  # its mode as it was
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())  # BatchNorm too
    assert torch.equal(torch.get_rng_state(), rng)  # the run's random stream is not drawn from


def test_a_model_whose_outputs_do_not_fit_the_data_is_refused_in_one_line(caplog):
    with pytest.raises(UserError) as error:
        check_outputs(Wide(5), "mynet.Wide", 1, 28, 10)
    assert str(error.value) == (
        "model mynet.Wide returns shape (2, 5) for a batch of 2 images of 1x28x28; it should return logits "
        "of shape (2, 10), one per class (data.num_classes=10)"
    )
    with pytest.raises(
        UserError,
        match=r"model mynet.Wide fails on a batch of 2 images of 3x32x32 \(data.in_channels, "
        r"data.image_size\): running_mean should contain 3072 elements not 784",
    ):
        check_outputs(Wide(10), "mynet.Wide", 3, 32, 10)
    with pytest.raises(UserError, match=r"returns a tuple for a batch of 2 images of 1x28x28; it should return one"):
        check_outputs(nn.Sequential(Wide(10), Pair()), "mynet.Pair", 1, 28, 10)
    with caplog.at_level("WARNING"):
        check_outputs(Wide(10, softmax=True), "mynet.Wide", 1, 28, 10)  # probabilities: trains, but wrongly
    assert "seems to return probabilities" in caplog.text and "return the values before the softmax" in caplog.text


def test_a_model_target_that_does_not_import_is_one_line_naming_why():
    with pytest.raises(UserError) as missing:
        build_model({"_target_": "mynet.MyNet", "width": 8})
    assert str(missing.value) == (
        "_target_: mynet.MyNet cannot be imported (no module named 'mynet'); put its module in the folder you "
        "run train.py from, or on PYTHONPATH, or install it"
    )
    with pytest.raises(
        UserError,
        match=r"^_target_: cnnsweep.train.model.ConvNett cannot be imported \(module "
        r"cnnsweep.train.model has no 'ConvNett'\); check the name$",
    ):
        build_model({"_target_": "cnnsweep.train.model.ConvNett"})
