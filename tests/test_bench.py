"""`cnnsweep bench` measures every variant and prints comparable numbers."""

import json

import pytest
import torch

from cnnsweep.tools.bench import format_table
from cnnsweep.train.machine import machine_facts, machine_label

from helpers import tool


def test_bench_measures_each_variant_and_its_ratio_to_classic(tiny_mnist):
    result = tool(
        "bench", f"data.root={tiny_mnist}", "data.download=false", "trainer.device=cpu", "--batches", "3",
        "--eval-batches", "1", "--rounds", "2", "--warmup", "1", "--workers", "0", "--json",
        "--also", "nhwc=trainer.channels_last=true",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    rows = {row["variant"]: row for row in report["rows"]}
    assert list(rows) == ["classic", "cnnsweep", "compute", "nhwc"] and report["device"] == "cpu"
    assert report["command"].startswith("cnnsweep bench data.root=") and "--also" in report["command"]
    assert report["torch"] == torch.__version__ and report["threads"] >= 1 and report["compile_cache"] == "shared"
    assert not any(row["compiled"] for row in rows.values())  # auto: 19 epochs of 5 steps stay eager
    assert report["machine"] == machine_facts(torch.device("cpu"))  # every figure names its machine
    assert {row["machine"] for row in rows.values()} == {machine_label(report["machine"])}
    assert format_table(report["rows"]).splitlines()[1].endswith(machine_label(report["machine"]))
    classic = rows["classic"]
    for row in rows.values():
        for rate, spread in (("train_images_per_s", "train_range"), ("eval_images_per_s", "eval_range")):
            slowest, fastest = row[spread]  # two rounds, two timings: their mean is the figure shown
            assert 0 < slowest < fastest and row[rate] == pytest.approx((slowest + fastest) / 2)
        assert row["train_vs_classic"] == pytest.approx(row["train_images_per_s"] / classic["train_images_per_s"])
        assert row["epoch_s"] == pytest.approx(600 / row["train_images_per_s"] + 200 / row["eval_images_per_s"])
    assert classic["train_vs_classic"] == pytest.approx(1.0)


def test_bench_refuses_an_unknown_variant():
    result = tool("bench", "--variants", "classic,turbo")
    assert result.returncode == 2 and "unknown variant(s) ['turbo']" in result.stderr


def test_bench_refuses_the_classic_pipeline_on_data_it_cannot_read():
    result = tool("bench", "data=cifar10")
    assert result.returncode == 2
    assert "the classic variant reads MNIST-like data only, not cnnsweep.train.data.CIFAR10Data" in result.stderr


def test_the_private_dynamo_setting_the_bench_raises_still_exists():
    # bench.main raises it so that many compiled variants in one process all stay compiled
    assert isinstance(torch._dynamo.config.recompile_limit, int)


def test_bench_times_the_runs_own_step_with_the_configured_trainer(tiny_mnist, monkeypatch):
    # The cnnsweep variant must step through Trainer.train_step with the parts a run builds: here the
    # configured label smoothing and weight average, which a hand-wired step could leave out.
    from cnnsweep.tools.bench import cnnsweep_variant
    from cnnsweep.train.loop import Trainer

    steps, averages, trainers = [], [], []
    run_step, run_average = Trainer.train_step, Trainer.averaged

    def spied_step(self, *args, **kwargs):
        trainers.append(self)
        step = run_step(self, *args, **kwargs)
        return lambda batch: steps.append(len(batch.labels)) or step(batch)

    def spied_average(self, model):
        averages.append(run_average(self, model))
        return averages[-1]

    monkeypatch.setattr(Trainer, "train_step", spied_step)
    monkeypatch.setattr(Trainer, "averaged", spied_average)
    overrides = [f"data.root={tiny_mnist}", "data.download=false", "trainer.device=cpu", "trainer.ema_decay=0.9",
                 "trainer.label_smoothing=0.1", "data.batch_size=64"]  # fmt: skip
    variant = cnnsweep_variant("cnnsweep", overrides)
    assert variant.train(3) == 3 * 64 and steps == [64, 64, 64]
    [trainer], [average] = trainers, averages
    assert trainer.label_smoothing == 0.1 and int(average.n_averaged) == 3  # every timed step updated it
    assert variant.evaluate(1) == 200  # the test split of tiny_mnist, in one evaluation batch
