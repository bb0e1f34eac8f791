"""Failpoints: kill the process at a named point of a turn, for the crash tests.

`GATEWAY_FAILPOINT=<name>` arms one point; reaching it sends SIGKILL to this process (what
a PaaS or the OOM killer does). Unarmed, `hit` is one string comparison. Points:
  journal.before  an update was fetched but not yet journaled
  journal.after   journaled, not yet processed
  llm.during      the LLM answer is streaming
  reply.after     the reply was delivered, not yet recorded in the journal
"""

from __future__ import annotations

import os
import signal

ARMED = os.environ.get("GATEWAY_FAILPOINT", "")


def hit(name: str) -> None:
    if ARMED and ARMED == name:
        os.kill(os.getpid(), signal.SIGKILL)
