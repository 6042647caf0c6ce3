"""The nightly job's schedule: APScheduler cron trigger with start-up catch-up."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

from personalization.errors import FieldError, InvalidInput
from personalization.nightly.job import NightlyJob, NightlyRunning, RunResult

__all__ = ["NightlyScheduler"]

log = logging.getLogger("personalization.nightly.job")


class NightlyScheduler:
    """Runs the job on a cron schedule (APScheduler) with start-up catch-up.

    Overlap is impossible twice over: APScheduler's ``max_instances=1`` within the process
    and the run lock across processes.  A fire time missed while the process was down is
    caught up at start (only the most recent one: a snapshot computed now for an older
    date would hold today's data anyway).
    """

    def __init__(self, job: NightlyJob, *, trigger: Any = None,
                 after_run: Callable[[RunResult], None] | None = None) -> None:
        from apscheduler.triggers.cron import CronTrigger

        self.job = job
        # Further nightly work of other packages (recommendation training), run after a success.
        self.after_run = after_run
        self.tz = job.settings.tz
        try:
            self.trigger = trigger or CronTrigger.from_crontab(job.settings.cron, timezone=self.tz)
        except ValueError as exc:
            raise InvalidInput([FieldError(["cron"], f"invalid cron expression {job.settings.cron!r}: {exc}")]) from exc
        self.scheduler: Any = None

    def previous_fire_time(self, now: datetime) -> datetime | None:
        """The last scheduled time at or before ``now`` within the catch-up window."""
        start = now - timedelta(days=self.job.settings.catch_up_days)
        prev: datetime | None = None
        t = self.trigger.get_next_fire_time(None, start)
        while t is not None and t <= now:
            prev = t
            t = self.trigger.get_next_fire_time(t, t + timedelta(microseconds=1))
        return prev

    def catch_up(self, now: datetime | None = None) -> RunResult | None:
        """Run now for the last missed fire time, if its run never succeeded."""
        now = now or datetime.now(self.tz)
        missed = self.previous_fire_time(now)
        if missed is None:
            return None
        as_of = missed.astimezone(self.tz).date()
        if self.job.store.succeeded_since(as_of, missed):
            return None
        log.info("catching up a missed nightly run", extra={"scheduled_for": missed.isoformat(),
                                                           "as_of": as_of.isoformat()})
        return self._run(as_of, "catch-up")

    def _run(self, as_of: date | None, trigger: str) -> RunResult | None:
        try:
            result = self.job.run(as_of, trigger=trigger)
        except NightlyRunning:
            return None
        except Exception:
            # Logged and recorded in the ledger; the scheduler keeps going for the next night.
            log.exception("scheduled nightly run failed")
            return None
        if self.after_run is not None:
            try:
                self.after_run(result)
            except Exception:
                log.exception("work after the nightly run failed")
        return result

    def scheduled(self) -> RunResult | None:
        """The scheduled job body: today's snapshot in the configured zone."""
        return self._run(None, "schedule")

    def start(self, *, blocking: bool = True) -> None:
        """Catch up, then run the schedule (blocking until stopped, or in a background thread)."""
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.schedulers.blocking import BlockingScheduler

        cls = BlockingScheduler if blocking else BackgroundScheduler
        self.scheduler = cls(timezone=self.tz)
        self.scheduler.add_job(
            self.scheduled, self.trigger, id="nightly", max_instances=1, coalesce=True,
            misfire_grace_time=6 * 3600, replace_existing=True,
        )
        self.catch_up()
        nxt = self.trigger.get_next_fire_time(None, datetime.now(self.tz))
        log.info("nightly scheduler started", extra={"cron": self.job.settings.cron, "timezone": str(self.tz),
                                                     "next_run": nxt.isoformat() if nxt else None})
        self.scheduler.start()

    def stop(self) -> None:
        """Stop the scheduler, waiting for a run in progress."""
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=True)
