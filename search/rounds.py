"""A search as one or more Tune runs ("rounds") over one Optuna study.

Ray Tune cannot add trials to a finished run (a restored run keeps the sample count it
was started with). A search that is resumed with a larger ``search.num_trials`` therefore
gets a new round: a fresh Tune run for the missing trials whose searcher loads the
search's Optuna study (``search.study``), so its TPE starts from every trial already
measured. Round 1 is Tune's experiment directory itself (``<storage>/<name>``); round k
lives in ``<storage>/<name>/rounds/round-k``. ``rounds.json`` records the rounds and
whether each ran to its end.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from search.layout import ROUNDS_DIR, ROUNDS_JSON
from trainables.storage import Location, resolve


@dataclass(frozen=True)
class Round:
    number: int
    num_trials: int
    # Ran to its end with no trial in ERROR (an errored or interrupted round is resumed).
    finished: bool = False


@dataclass(frozen=True)
class Steps:
    """What ``hpsearch run --resume`` does: finish an unfinished round, then add one."""

    resume: Round | None
    add: Round | None


def next_steps(rounds: list[Round], num_trials: int) -> Steps:
    """The rounds to resume and to start for a search configured for ``num_trials``.

    A search recorded before it had rounds (or killed before it wrote them) is round 1.
    Trials are only added: a smaller count than already run adds nothing.
    """
    if not rounds:
        rounds = [Round(1, num_trials)]
    last = rounds[-1]
    done = sum(r.num_trials for r in rounds)
    add = Round(last.number + 1, num_trials - done) if num_trials > done else None
    return Steps(resume=None if last.finished else last, add=add)


def after_resume(resumed: Round, held: int, add: Round | None) -> tuple[Round, Round | None]:
    """The resumed round as it ended holding ``held`` trials, and the round to add next.

    Tune uploads a snapshot's files (the trials' state, the searcher's) in parallel, so a
    driver killed between them can leave the searcher's count of created trials ahead of
    the trials stored: the restored run then never creates the trials in between, and
    ends short. The round is recorded with the trials it holds; the missing ones join the
    round added next (a new round if there was none), whose searcher reads the study.
    """
    missing = resumed.num_trials - held
    if missing <= 0:
        return resumed, add
    kept = replace(resumed, num_trials=held)
    if add is None:
        return kept, Round(resumed.number + 1, missing)
    return kept, replace(add, num_trials=add.num_trials + missing)


def tune_location(location: Location, experiment: str, number: int) -> tuple[Location, str]:
    """The storage and the Tune run name of a round."""
    if number == 1:
        return location, experiment
    return resolve(f"{location.uri}/{experiment}/{ROUNDS_DIR}"), f"round-{number}"


def read(location: Location, experiment: str) -> list[Round]:
    path = location.join(experiment, ROUNDS_JSON)
    if not location.exists(path):
        return []
    with location.filesystem.open_input_stream(path) as handle:
        return [Round(**raw) for raw in json.loads(handle.read())]


def write(location: Location, experiment: str, rounds: list[Round]) -> None:
    location.filesystem.create_dir(location.join(experiment), recursive=True)
    with location.filesystem.open_output_stream(location.join(experiment, ROUNDS_JSON)) as out:
        out.write(json.dumps([asdict(r) for r in rounds], indent=2).encode())


def record(location: Location, experiment: str, round_: Round) -> list[Round]:
    """Add or update one round in ``rounds.json``; returns all rounds."""
    rounds = [r for r in read(location, experiment) if r.number != round_.number]
    rounds = sorted([*rounds, round_], key=lambda r: r.number)
    write(location, experiment, rounds)
    return rounds

