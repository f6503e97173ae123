"""The chaos run: `flexbot run` under every fault the sandbox has, killed at random moments.

A sandbox subprocess (simulated traders, market time 60x the wall clock) injects, all at once:
WebSocket connections dropped every 10 s, access tokens expiring every 5 s, 10% of REST calls
answered 5xx, ambiguous order answers (the order exists, the answer is lost), and in bursts 429s,
half-open connections (pings unanswered; the drops pause meanwhile, as a half-open link hears no
close) and hanging order answers. The daemon trades with the
example strategies (seller, buyer, market maker) and two synthetic meters, and is killed with
SIGKILL at random moments, restarted each time as systemd would. At other random moments:

- *two daemons on one store*: a second `flexbot run` on the same config starts beside the
  running one; it must exit 2 within seconds, naming the first's pid, having done nothing else
  (its only log event `daemon.store_unusable`), and the first runs on;
- *disk full*: no file of the running daemon may grow any more (a file-size limit of one byte on
  the process: writes fail as on a full disk); it must halt (cancel its open orders), log one
  `store.failed` and exit 1 without a traceback; it is restarted still under the limit, must wait
  in start-up (`store.unwritable`) without exiting, and once the limit is lifted must reach
  `daemon.ready` and place orders again.

Then the killing stops, and the last run trades until every metering that is due has been
accepted and it has itself placed an order and had a metering accepted; it stops on SIGTERM.

The sandbox's introspection is the referee; the run checks and prints:

- intents journalled vs orders placed, and duplicates: market orders of ours that no journalled
  intent owns (a resent order), or one order claimed by two intents: must be 0;
- contracts of ours whose metering is due vs accepted metering submissions: 0 missing,
  0 duplicated (identical resends, which the market recognises, are counted apart);
- what the last run did after the last restart: orders placed (the sandbox's orders created
  since) and metering accepted (the journal's outbox, the sandbox's count): at least 1 each;
- the two-daemon and disk-full events, each as described above;
- unhandled exceptions (tracebacks, `exception` fields), non-JSON lines in the daemon's log and
  anything on its stderr but a halt's last words: 0;
- secrets in the daemon's log (the password, a token, a Bearer credential): 0;
- how long the daemon had no live link to the market (any stream down, or the process dead).

    .venv/bin/python -m bench.chaos [--duration 900] [--kills 20] [--seed 1] [--keep DIR]
                                    [--two-daemons 3] [--disk-full 2]

`--keep DIR` runs in DIR and leaves there the logs, the config, the store, and what a third party
needs to recount: the sandbox's orders and statistics at the end (JSON), a copy of the journal
taken after the daemon's last stop, and `RECOUNT.txt`, which says how.

Exit status 0 when every check passes, 1 otherwise. `tests/test_chaos.py` runs a short form.

Where it lives: `settings` (the run's settings, bounds and constant faults), `processes` (the
sandbox and `flexbot run` subprocesses, their output copied), `events` (fault bursts, the kill
moments and the event plan, two daemons on one store, disk full, the timeline of runs),
`referee` (the market's state, the recount, the logs read, secrets, downtime), `report` (the
report and its rendering, the final state `--keep` writes), `runner` (the run from start to
referee) and `__main__` (the command line).
"""

from __future__ import annotations

from bench.chaos.events import DiskFull, SecondDaemon
from bench.chaos.referee import ENDPOINTS, Downtime, downtime
from bench.chaos.report import FinalState, Report, keep_final_state
from bench.chaos.runner import run
from bench.chaos.settings import SECOND_BOUND_S, ChaosSettings

__all__ = [
    "ENDPOINTS",
    "SECOND_BOUND_S",
    "ChaosSettings",
    "DiskFull",
    "Downtime",
    "FinalState",
    "Report",
    "SecondDaemon",
    "downtime",
    "keep_final_state",
    "run",
]
