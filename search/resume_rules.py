"""What a resumed search may change: its config is compared, field by field, with the one
the search recorded when it started (``search_config.json``)."""

from __future__ import annotations

from typing import Any

# What `hpsearch run --resume` may change: how many trials in all (more adds trials) and
# how many run at once. Any other change would mix two recipes or spaces in one search.
RESUMABLE_FIELDS = ("search.num_trials", "search.max_concurrent_trials", "resources.steps_per_execution",
                    "resources.preemption_check_steps",
                    "resources.placement_timeout_s", "storage.lease_timeout_s")


def changed_fields(recorded: dict, current: dict, prefix: str = "") -> list[str]:
    """The dotted names of the fields whose values differ between two configs' plain
    forms (as :func:`config_to_dict` writes them), in declaration order."""
    changed = []
    for key in dict.fromkeys([*recorded, *current]):
        name = f"{prefix}{key}"
        old, new = recorded.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changed += changed_fields(old, new, f"{name}.")
        elif old != new:
            changed.append(name)
    return changed


def resume_refusals(recorded: dict, current: dict) -> list[str]:
    """The changed fields a resumed search cannot take, each as ``name: old -> new``."""

    def value(raw: dict, name: str) -> Any:
        for part in name.split("."):
            raw = raw.get(part) if isinstance(raw, dict) else None
        return raw

    return [f"{name}: {value(recorded, name)!r} -> {value(current, name)!r}"
            for name in changed_fields(recorded, current) if name not in RESUMABLE_FIELDS]
