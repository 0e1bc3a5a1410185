"""trainer.compile: auto's rule, the shared compile cache, and compiled runs keeping every promise eager runs make."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from cnnsweep.records import RunStatus
from cnnsweep.tools.evaluate import evaluate_checkpoint
from cnnsweep.train import compiling
from cnnsweep.train.compiling import MIN_STEPS_COLD, MIN_STEPS_WARM, choose, graph_key
from cnnsweep.train.data import Split
from cnnsweep.train.loop import Trainer
from cnnsweep.train.model import Dropout

from helpers import SEED_WIDTHS, compose_train, metrics, seed_cnn, summary, tiny_overrides, train_py, wait_for_rows

CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(compiling.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_auto_compiles_long_runs_and_sooner_with_a_warm_cache(cache):
    assert choose("auto", CPU, MIN_STEPS_COLD - 1, "k").compile is False
    assert choose("auto", CPU, MIN_STEPS_COLD, "k").compile is True
    assert choose("auto", CPU, MIN_STEPS_WARM, "k").reason.endswith(f"cache cold (eager below {MIN_STEPS_COLD:,})")
    compiling.note_compiled("k")
    assert (cache / compiling.COMPILED_NOTES / "k").is_file()
    warm = choose("auto", CPU, MIN_STEPS_WARM, "k")
    assert warm.compile is True and "compile cache warm" in warm.reason
    assert choose("auto", CPU, MIN_STEPS_WARM - 1, "k").compile is False
    assert choose("auto", CPU, MIN_STEPS_WARM, "other").compile is False  # another graph is still cold
    assert choose("auto", torch.device("mps"), 10**6, "k").compile is False
    assert choose(True, CPU, 1, "k").compile is True and choose(False, CPU, 10**6, "k").compile is False


def test_the_cache_folder_is_torchs_own_setting_or_ours(monkeypatch, tmp_path):
    monkeypatch.delenv(compiling.CACHE_ENV, raising=False)
    assert compiling.cache_dir() == compiling.COMPILE_CACHE
    assert os.environ[compiling.CACHE_ENV] == str(compiling.COMPILE_CACHE)  # where torch's compiler writes
    monkeypatch.setenv(compiling.CACHE_ENV, str(tmp_path))
    assert compiling.cache_dir() == tmp_path


def test_a_run_told_to_compile_compiles_into_the_shared_folder(monkeypatch):
    monkeypatch.delenv(compiling.CACHE_ENV, raising=False)
    trainer = Trainer(1, "cpu", False, None, None, True, "fp32", None, label_smoothing=0.0, ema_decay=None)
    one_batch = Split(torch.zeros(16, 1, 28, 28, dtype=torch.uint8), torch.zeros(16, dtype=torch.long))
    model = seed_cnn()
    forward, choice = trainer.compiled(model, one_batch, 16, 1)
    assert choice.compile and forward is not model and forward._orig_mod is model  # torch.compile's wrapper
    assert os.environ[compiling.CACHE_ENV] == str(compiling.COMPILE_CACHE)  # set before torch compiles anything


def test_graph_keys_ignore_dropout_rates_and_tell_everything_else_apart():
    def key(dropout=0.1, widths=SEED_WIDTHS, shape=(128, 1, 28, 28), precision="fp32", nhwc=False):
        return graph_key(seed_cnn(widths=widths, dropout=dropout), shape, CPU, precision, nhwc)

    assert key(0.1) == key(0.03)
    others = {key(widths=[12, *SEED_WIDTHS[1:]]), key(shape=(64, 1, 28, 28)), key(precision="bf16"), key(nhwc=True)}
    assert key() not in others and len(others) == 4


def test_compiled_dropout_takes_its_rate_as_an_input_not_a_constant():
    graphs = []

    def counting_backend(graph, inputs):
        graphs.append(graph)
        return graph.forward

    torch._dynamo.reset()
    x = torch.ones(64, 64)
    for p in (0.1, 0.3):
        dropped = torch.compile(Dropout(p), backend=counting_backend)(x)
        assert (dropped == 0).float().mean().item() == pytest.approx(p, abs=0.03)
        assert dropped.unique().tolist() == [0.0, pytest.approx(1 / (1 - p), rel=1e-4)]
    assert len(graphs) == 1  # the second rate reused the first rate's graph


def test_compiled_runs_evaluate_an_nhwc_copy_as_eager_runs_do():
    trainer = Trainer(1, "cpu", False, None, None, True, "fp32", None, label_smoothing=0.0, ema_decay=None)
    model = seed_cnn()
    evaluated = trainer.eval_model(model)
    assert evaluated is not model and evaluated.features[0].weight.is_contiguous(memory_format=torch.channels_last)


COMPILED = ("trainer.epochs=8", "data.val_size=100", "trainer.compile=true", "trainer.ema_decay=0.9")


@pytest.fixture(scope="module")
def compiled_run(tiny_mnist, tmp_path_factory):
    """A compiled 8-epoch tiny run with a weight average that nothing stops (400 images: 3 full batches and
    one of 16, which runs eagerly)."""
    run_dir = tmp_path_factory.mktemp("compiled") / "run"
    result = train_py(*tiny_overrides(tiny_mnist, *COMPILED), f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir


@pytest.mark.slow
def test_a_compiled_run_checkpoints_plain_weights_that_evaluate_to_its_numbers(compiled_run):
    said = summary(compiled_run)
    assert said["compile"] == {"compiled": True, "reason": "trainer.compile=true"}
    assert "compile: on (trainer.compile=true)" in (compiled_run / "train.log").read_text()
    state = torch.load(compiled_run / "checkpoints" / "last.pt", weights_only=True)
    assert not [name for name in state["model"] if "_orig_mod" in name]
    seed_cnn().load_state_dict(state["model"])  # a plain ConvNet loads them
    assert int(state["ema"]["n_averaged"]) == 8 * 4
    evaluation = evaluate_checkpoint(compiled_run, "last", device="cpu")
    assert evaluation["test_acc"] == pytest.approx(said["final_test_acc"], abs=1e-9)


@pytest.mark.slow
def test_a_compiled_run_stopped_by_sigterm_resumes_to_the_same_metrics(tiny_mnist, tmp_path, compiled_run):
    run_dir = tmp_path / "run"
    process = train_py(*tiny_overrides(tiny_mnist, *COMPILED), f"hydra.run.dir={run_dir}", wait=False)
    wait_for_rows(run_dir, 1, process, timeout=300)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 143, output
    assert summary(run_dir)["status"] == RunStatus.INTERRUPTED and len(metrics(run_dir)) < 8

    result = train_py(f"resume={run_dir}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert metrics(run_dir) == metrics(compiled_run)
    assert summary(run_dir)["compile"]["compiled"] is True


def test_auto_leaves_a_smoke_run_eager(tiny_mnist, tmp_path, cache):
    from cnnsweep.train.run import train

    train(compose_train(tiny_overrides(tiny_mnist)), tmp_path)
    assert summary(tmp_path)["compile"] == {
        "compiled": False,
        "reason": f"auto: 5 planned steps, compile cache cold (eager below {MIN_STEPS_COLD:,})",
    }


def test_a_resumed_run_trains_as_it_began_whatever_auto_would_say_now(tiny_mnist, tmp_path, cache, monkeypatch):
    from cnnsweep.train.run import train

    train(compose_train(tiny_overrides(tiny_mnist)), tmp_path)  # auto, cold cache: eager
    began = summary(tmp_path)["compile"]
    assert began["compiled"] is False
    monkeypatch.setattr(compiling, "MIN_STEPS_COLD", 1)  # now auto would compile the rest
    assert choose("auto", CPU, 5, "any").compile is True
    train(compose_train(tiny_overrides(tiny_mnist, "trainer.epochs=2")), tmp_path, resume=True)
    resumed = summary(tmp_path)
    assert resumed["compile"] == {"compiled": False, "reason": f"as before the resume: {began['reason']}"}
    assert resumed["epochs_run"] == 2 and resumed["resumed_after_epoch"] == 1
