"""The up-front cost estimate of an adaptive run: say, before it is spent, how long its step
budget would take and what drives that (display only: results never depend on timing)."""

from __future__ import annotations

#: Runs expected to take longer than this (seconds) say so, with what drives the cost, when they start.
ANNOUNCE_AFTER = 120.0


def announce_cost(bar, seconds_per_step: float, budget: int, num_chains: int, job) -> None:
    """Print, above the progress bar, how long the whole budget would take at the speed of the
    first window (the run's results never depend on this timing), if that is over ANNOUNCE_AFTER."""
    if bar is None or getattr(bar, "disable", True):
        return
    expected = seconds_per_step * budget
    if expected <= ANNOUNCE_AFTER:
        return
    full = " (full batch)" if job.batch_size >= job.data.n else ""
    bar.write(f"lambdahat: this run may take up to about {expected / 60:.0f} min: a budget of max_steps = {budget} steps "
              f"for {num_chains} chains of {job.potential.num_params} weights, batch {job.batch_size}{full}, at "
              f"{seconds_per_step * 1e3:.1f} ms per step of all chains. Lower max_steps, or give the settings of an earlier run "
              "(**result.settings), to bound it.")
