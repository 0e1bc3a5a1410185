"""A trial's repeats (`hydra.sweeper.repeats=K`): one configuration trained on K seeds, one job per seed.

Every trial trains on the same K seeds, `noise.repeat_seeds(seed, K)` (paired: each configuration sees the
same initialisations, dropout masks, data orders and augmentations); a repeat's job gets `seed=<its seed>`
and keeps everything else, the validation split (`data.split_seed`) included. Repeat r of trial N runs as
Hydra job number N * K + r (its `hydra.job.num`: the job finds its trial and repeat from it and
`hydra.sweeper.repeats`) in the folder `<sweep dir>/N/r/` (a `hydra.sweep.subdir` override of its job).
With K = 1 a trial is one job, number N, in `<sweep dir>/N/`, as without repeats.

A repeat that ended is recorded on its trial (user attr `repeat_<r>`: seed, state, values, facts), so a
trial re-queued after its worker was lost carries its finished repeats over and runs only the others.
Once every repeat launched has ended, the trial is told:
- FAIL if a repeat failed (raised, diverged, was lost): the reason names the first such repeat and seed;
- PRUNED if the pruner stopped it (see trial.py's RepeatReporter for the rule);
- else COMPLETE with, for each objective, the mean over its K repeats.
A trial that failed or was pruned launches none of its repeats still pending.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import TrialState

from cnnsweep.errors import UserError
from cnnsweep.records import RunStatus
from cnnsweep.sweep.attrs import REASON, REPEATS_RAN, VALUES_SD
from cnnsweep.sweep.noise import SEED_KEY as SEED
from cnnsweep.sweep.outcomes import Outcome
from cnnsweep.sweep.results import FACTS
from cnnsweep.sweep.states import COMPLETE


def job_number(trial: int, repeat: int, repeats: int) -> int:
    """The Hydra job number of a trial's repeat (the trial's own number when there are no repeats)."""
    return trial * repeats + repeat


def job_place(job_num: int, repeats: int) -> tuple[int, int]:
    """(trial number, repeat index) of Hydra job `job_num` in a sweep with `repeats` per trial."""
    return divmod(job_num, repeats)


def repeat_overrides(overrides: Sequence[str], trial: int, repeat: int, seed: int) -> tuple[str, ...]:
    """A repeat's job overrides: the trial's with its own seed, in its own folder under the trial's."""
    kept = [override for override in overrides if not override.startswith(f"{SEED}=")]
    return (*kept, f"{SEED}={seed}", f"hydra.sweep.subdir={trial}/{repeat}")


def check_repeats(repeats: int, swept: Sequence[str]) -> None:
    """Refuse a repeat count below 1, and a swept seed when repeats vary it."""
    if not isinstance(repeats, int) or repeats < 1:
        raise UserError(f"hydra.sweeper.repeats={repeats}: give a whole number of seeds per trial, 1 or more")
    if repeats > 1 and SEED in swept:
        raise UserError(
            f"hydra.sweeper.repeats={repeats} trains every trial on the seeds {SEED}, {SEED}+1, ...: "
            f"drop {SEED} from the search space (hydra.sweeper.params or the command line)"
        )


def repeat_record(seed: int, outcome: Outcome, curve: list[float] | None) -> dict[str, Any]:
    """What trial attr `repeat_<r>` holds for a repeat that ended (JSON: a storage keeps it as such)."""
    facts = {k: outcome.attrs.get(k) for k in FACTS}  # trials.csv's facts, the reason last
    return {SEED: seed, "state": outcome.state.name, "values": outcome.values, **facts, "curve": curve}


@dataclass
class TrialRepeats:
    """One trial of this worker with its repeats: those pending, running and ended (under the lanes' lock)."""

    number: int
    overrides: tuple[str, ...]  # the trial's (its parameters and the sweep's fixed overrides), without a seed
    seeds: list[int]  # one per repeat
    records: dict[int, dict[str, Any]]  # ended repeats, by index
    pending: list[int] = field(default_factory=list)
    running: set[int] = field(default_factory=set)
    errors: dict[int, BaseException] = field(default_factory=dict)  # failed repeats' errors (this process)
    closed: bool = False  # told to Optuna, or re-queued

    def __post_init__(self) -> None:
        # A re-queued trial whose carried-over repeats include one that failed or was pruned runs no more.
        done = any(record["state"] != COMPLETE for record in self.records.values())
        self.pending = [] if done else [r for r in range(len(self.seeds)) if r not in self.records]

    def take(self) -> int:
        repeat = self.pending.pop(0)
        self.running.add(repeat)
        return repeat

    def job(self, repeat: int) -> tuple[tuple[str, ...], int]:
        """The overrides and Hydra job number of one repeat."""
        if len(self.seeds) == 1:
            return self.overrides, self.number
        overrides = repeat_overrides(self.overrides, self.number, repeat, self.seeds[repeat])
        return overrides, job_number(self.number, repeat, len(self.seeds))

    def ended(self, repeat: int, record: dict[str, Any], error: BaseException | None) -> None:
        self.running.discard(repeat)
        self.records[repeat] = record
        if error is not None:
            self.errors[repeat] = error
        if record["state"] != COMPLETE:
            self.pending.clear()  # the trial cannot complete: run no more of it

    @property
    def finished(self) -> bool:
        return not self.pending and not self.running


def trial_outcome(trial: TrialRepeats, pruned_by: str | None) -> Outcome:
    """What a trial whose repeats all ended comes to (see the module's rules); `pruned_by` is the reason the
    pruner gave (trial.py), if it stopped the trial."""
    records = trial.records
    facts = {
        "n_params": next((r["n_params"] for r in records.values() if r.get("n_params") is not None), None),
        "epochs_run": max((r["epochs_run"] for r in records.values() if r.get("epochs_run") is not None), default=None),
        "test_acc": mean_of([r.get("test_acc") for r in records.values()]),
    }
    facts = {key: item for key, item in facts.items() if item is not None}
    for state in (TrialState.FAIL, TrialState.PRUNED):
        ended = sorted(r for r, record in records.items() if record["state"] == state.name)
        if ended:
            first = ended[0]
            said = records[first][REASON] if state == TrialState.FAIL or pruned_by is None else pruned_by
            reason = f"repeat {first} (seed {records[first][SEED]}) {state.name}: {said}"
            return Outcome(state, None, trial.errors.get(first), {**facts, REASON: reason})
    if pruned_by is not None or len(records) < len(trial.seeds):  # pruned before its last repeats started
        return Outcome(TrialState.PRUNED, None, None, {**facts, REASON: pruned_by or str(RunStatus.PRUNED)})
    columns = list(zip(*(records[r]["values"] for r in sorted(records)), strict=True))  # one per objective
    values = [statistics.fmean(column) for column in columns]
    spread = {VALUES_SD: [statistics.stdev(column) for column in columns]} if len(records) > 1 else {}
    return Outcome(TrialState.COMPLETE, values, None, {**facts, **spread, REPEATS_RAN: len(records)})


def mean_of(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None and not math.isnan(value)]
    return statistics.fmean(present) if present else None
