"""The real config: every option composes and instantiates; typos and wrong types are refused."""

import inspect

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import get_class, get_object, instantiate
from omegaconf import OmegaConf

from cnnsweep.cli import precheck
from cnnsweep.schema import GROUPS as SCHEMA_GROUPS
from cnnsweep.schema import compose_config, register_options, target_nodes
from cnnsweep.signatures import parameters
from cnnsweep.train.model import check_budget, count_parameters

from helpers import CONF, compose_train

GROUPS = ("model", "optimizer", "scheduler", "augmentation", "data", "trainer")
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]


def test_the_required_options_exist():
    required = {
        ("model", "seed_cnn"),
        ("optimizer", "sgd"),
        ("optimizer", "adamw"),
        ("scheduler", "step"),
        ("scheduler", "onecycle"),
        ("scheduler", "cosine"),
        ("augmentation", "rotate"),
        ("augmentation", "none"),
        ("augmentation", "crop_flip"),
        ("data", "mnist"),
        ("data", "fashion_mnist"),
        ("data", "kmnist"),
        ("data", "cifar10"),
        ("data", "image_folder"),
        ("trainer", "default"),
    }
    assert required <= set(OPTIONS)


def made_as_named(made: object, node) -> bool:
    """Whether `made` is an object of exactly the class its config node's `_target_` names."""
    return type(made) is get_class(node._target_)


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_option_composes_and_instantiates(group, option):
    needed = ["data.root=folder", "data.num_classes=3"] if option == "image_folder" else []  # the user's to say
    cfg = compose_train([f"{group}={option}", *needed])
    model = instantiate(cfg.model, _convert_="all")
    optimizer = instantiate(cfg.optimizer, _convert_="all")(params=model.parameters())
    scheduler = instantiate(cfg.scheduler)(optimizer, epochs=cfg.trainer.epochs, steps_per_epoch=10)
    # each object is the class its option names, with the option's settings
    assert made_as_named(optimizer, cfg.optimizer) and optimizer.defaults["lr"] == cfg.optimizer.lr
    assert scheduler.optimizer is optimizer  # the schedule drives this optimizer
    for name in ("augmentation", "data", "trainer"):
        assert made_as_named(instantiate(cfg[name]), cfg[name])


def test_default_composition_is_the_reference_recipe():
    cfg = compose_train()
    assert cfg.optimizer._target_ == "torch.optim.SGD"
    assert (cfg.optimizer.lr, cfg.optimizer.momentum) == (0.025, 0.9)
    assert (cfg.scheduler.step_size, cfg.scheduler.gamma) == (9, 0.15)
    assert (cfg.augmentation.degrees, cfg.augmentation.interpolation) == (7.0, "nearest")
    assert (cfg.data.batch_size, cfg.data.mean, cfg.data.std, cfg.data.val_size) == (128, [0.1307], [0.3081], 0)
    assert cfg.trainer.epochs == 19
    assert (cfg.trainer.label_smoothing, cfg.trainer.ema_decay) == (0.0, None)
    assert cfg.model.dropout == 0.1
    assert cfg.budget.max_params == 20000


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lrr=0.1", "Key 'lrr' not in 'SGDSchema'"),
        ("optimizer.lr=fast", "could not be converted to Float"),
        ("trainer.epochs=1.5", "could not be converted to Integer"),
        ("model.widths=[10,abc]", "could not be converted to Integer"),
        ("data.val_size=many", "could not be converted to Integer"),
    ],
)
def test_misspelt_keys_and_wrong_types_are_refused_when_composing(override, message):
    with pytest.raises(ConfigCompositionException) as error:
        compose_train([override])
    assert message in str(error.value) + str(error.value.__cause__)


def test_unknown_group_option_is_refused():
    with pytest.raises(MissingConfigException, match="optimizer/nadam"):
        compose_train(["optimizer=nadam"])


def test_a_misspelt_key_inside_a_yaml_file_is_refused(tmp_path):
    bad = tmp_path / "optimizer"
    bad.mkdir()
    (bad / "typo.yaml").write_text(
        "defaults:\n  - /schema/optimizer@_here_: sgd\n  - _self_\n"
        "_target_: torch.optim.SGD\nlr: 0.1\nmomentum: 0.9\nweight_decay: 0.0\nnesterov: false\n"
        "momentun: 0.8\n"
    )
    with pytest.raises(ConfigCompositionException) as error:
        compose_train([f"hydra.searchpath=[file://{tmp_path}]", "optimizer=typo"])
    assert "momentun" in str(error.value) + str(error.value.__cause__)


# (file, what it sets): an option whose `_target_` takes no such argument (a third-party class, one of ours)
NOT_PARAMETERS = [
    ("optimizer/sgd_typo.yaml", "_target_: torch.optim.SGD\n_partial_: true\nlr: 0.1\nmomentun: 0.9\n", "momentun"),
    ("augmentation/spin.yaml", "_target_: cnnsweep.train.augment.RandomRotation\ndegrees: 7.0\n"
     "interpolation: nearest\nfill: 0\n", "fill"),
]  # fmt: skip


@pytest.mark.parametrize(("file", "content", "key"), NOT_PARAMETERS)
def test_an_option_setting_a_key_its_target_does_not_take_is_refused_when_composing(tmp_path, file, content, key):
    group, name = file.removesuffix(".yaml").split("/")
    (tmp_path / group).mkdir()
    (tmp_path / file).write_text(f"defaults:\n  - /schema/{group}@_here_: {name}\n  - _self_\n{content}")
    register_options(tmp_path)  # as `import cnnsweep` does for conf/: the schema comes from the target's signature
    with pytest.raises(ConfigCompositionException) as error:
        compose_train([f"hydra.searchpath=[file://{tmp_path}]", f"{group}={name}"])
    assert f"Key '{key}' not in" in str(error.value) + str(error.value.__cause__)


def test_an_option_of_a_config_dir_is_checked_against_its_targets_signature(tmp_path, capsys):
    (tmp_path / "optimizer").mkdir()
    (tmp_path / "optimizer" / "mine.yaml").write_text(
        "defaults:\n  - /schema/optimizer@_here_: mine\n  - _self_\n"
        "_target_: torch.optim.Adagrad\n_partial_: true\nlr: 0.01\nlr_decay: 0.0\n"
    )
    with pytest.raises(SystemExit) as exited:
        precheck(["--config-dir", str(tmp_path), "optimizer=mine", "optimizer.lr_decy=0.1"], CONF)
    said = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and said == (
        "error: optimizer.lr_decy is not a key of optimizer; allowed keys: lr, lr_decay"
    )  # Adagrad's own arguments that the option sets: its other ones keep torch's defaults


def test_an_option_whose_target_has_no_source_to_read_composes_with_its_own_keys(tmp_path):
    (tmp_path / "augmentation").mkdir()
    (tmp_path / "augmentation" / "compiled.yaml").write_text(
        "defaults:\n  - /schema/augmentation@_here_: compiled\n  - _self_\n_target_: builtins.dict\nstrength: 1\n"
    )  # builtins: compiled into Python, no source file
    register_options(tmp_path)
    searched = f"hydra.searchpath=[file://{tmp_path}]"
    assert compose_train([searched, "augmentation=compiled", "augmentation.strength=2"]).augmentation.strength == 2
    with pytest.raises(ConfigCompositionException) as error:
        compose_train([searched, "augmentation=compiled", "augmentation.strenght=2"])
    assert "Key 'strenght' not in 'DictSchema'" in str(error.value) + str(error.value.__cause__)


TARGETS = sorted(
    {str(node["_target_"]) for group in SCHEMA_GROUPS for path in (CONF / group).glob("*.yaml")
     for node in target_nodes(path).values()}
)  # fmt: skip


def runtime_parameters(target) -> list[inspect.Parameter]:
    """inspect's parameters of a class or function; a class's own after its base's where its __init__ passes
    **kwargs on to the base's."""
    if not inspect.isclass(target):
        return list(inspect.signature(target).parameters.values())
    levels = []
    for owner in (owner for owner in inspect.getmro(target) if "__init__" in vars(owner)):
        levels.append(list(inspect.signature(owner.__init__).parameters.values())[1:])
        if not any(p.kind == p.VAR_KEYWORD for p in levels[-1]):
            break
    found = [p for level in reversed(levels) for p in level if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    return [p for i, p in enumerate(found) if p.name not in {q.name for q in found[:i]}]


@pytest.mark.parametrize("target", TARGETS)
def test_the_schemas_source_reading_agrees_with_inspect(target):
    """The schemas read signatures from source (no import of torch at `import cnnsweep`): the same parameters,
    in the same order, with the same defaults present, as the imported target's signature."""
    expected = [(p.name, p.default is inspect.Parameter.empty) for p in runtime_parameters(get_object(target))]
    assert [(p.name, p.required) for p in parameters(target)] == expected


def test_a_schema_holds_the_keys_its_option_sets_typed_by_the_signature():
    cfg = compose_train(["optimizer=rmsprop", "optimizer.momentum=0.5"])
    assert list(cfg.optimizer) == [
        "_target_",
        "_partial_",
        "lr",
        "alpha",
        "eps",
        "weight_decay",
        "momentum",
        "centered",
    ]
    assert cfg.optimizer.momentum == 0.5  # the signature's other arguments (foreach, capturable, ...) stay torch's
    with pytest.raises(ConfigCompositionException):
        compose_train(["optimizer=rmsprop", "optimizer.centered=sometimes"])  # bool, from `centered: bool`


EXPERIMENTS = sorted(path.stem for path in (CONF / "experiment").glob("*.yaml"))
# recipe -> (most parameters, most epochs) that its target allows
RECIPE_LIMITS = {
    "seed_tuned": (18_970, 19),
    "fast": (20_000, 4),
    "best": (20_000, 20),
    "tiny": (8_000, 15),
}


# recipe -> the search whose confirmation on fresh seeds it is (README, "Confirmed on fresh seeds")
CONFIRMED = {"minute": "minute", "seed_tuned": "lr_gamma_dropout"}


def test_the_recipes_exist():
    assert set(RECIPE_LIMITS) <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_recipe_composes_and_keeps_within_its_limits(name):
    cfg = compose_train([f"experiment={name}"])
    model = instantiate(cfg.model, _convert_="all")
    n_params = count_parameters(model)
    check_budget(n_params, cfg.budget.max_params)
    instantiate(cfg.augmentation), instantiate(cfg.trainer)
    max_params, max_epochs = RECIPE_LIMITS.get(name, (20_000, None))
    assert n_params <= max_params and (max_epochs is None or cfg.trainer.epochs <= max_epochs)
    if name in CONFIRMED:  # trains as its confirmation did: the search's validation split held out
        searched = compose_config([f"experiment={name}", f"hparams_search={CONFIRMED[name]}"], with_hydra=True)
        assert cfg.data.val_size == searched.data.val_size > 0
    else:  # measured on the test set after training on all 60,000
        assert cfg.data.val_size == 0


def test_seed_tuned_changes_only_what_its_sweep_searched():
    seed, tuned = compose_train([]), compose_train(["experiment=seed_tuned"])
    search = compose_config(["hparams_search=lr_gamma_dropout"], with_hydra=True)
    searched = set(search.hydra.sweeper.params)
    trained_as = {"data.val_size", "trainer.compile"}  # as its search and its confirmation trained
    changed = {
        f"{group}.{key}"
        for group in ("model", "optimizer", "scheduler", "augmentation", "data", "trainer")
        for key in seed[group]
        if seed[group][key] != tuned[group][key]
    }
    assert changed == searched | trained_as  # the seed's network, schedule, data and loop; new lr, gamma, dropout
    held = sorted(trained_as)
    assert (
        [OmegaConf.select(tuned, key) for key in held]
        == [OmegaConf.select(search, key) for key in held]
        == [5000, True]
    )
    assert count_parameters(instantiate(tuned.model, _convert_="all")) == 18_970
