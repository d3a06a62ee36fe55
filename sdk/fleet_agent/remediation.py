"""The remediation commands on the agent's side (``restart``, ``stop``, ``drain``, ``throttle``,
``clear_cache``, ``resume_work``): handlers, the SDK's defaults, and the signed acknowledgements.

    @agent.on_command(CommandType.CLEAR_CACHE)
    def clear(command: Command) -> None:
        cache.clear()

Each such command (:data:`~fleet_agent.contracts.ACKED_COMMANDS`) is acknowledged with a
:class:`~fleet_agent.contracts.CommandAck` on ``agent-command-acks``, signed like the agent's other events
(unsigned for an agent with no key): ``acknowledged`` on receipt, then ``done`` or ``failed`` (``detail``: a
few words; a handler's exception by its class name only). A command id is run once in a process (the
recorder's command ids, :meth:`CostRecorder.apply <fleet_agent.costs.CostRecorder.apply>`, decide what is
new): one delivered again (a redelivery, or the fleet re-sending because our ack was lost) is not run again;
it is re-acknowledged with the furthest state already sent for it.

Defaults, and what a handler changes:

- ``throttle``: the recorder refuses calls beyond ``calls_per_minute`` in any minute until ``until`` or a
  ``resume_work`` (:mod:`fleet_agent.cost_holds`), whatever the handler; a handler runs after (to slow the
  agent's own work, say). :attr:`Remediation.throttle` is the cap in force.
- ``drain``: :attr:`Remediation.draining` is True until a ``resume_work``; the agent's loop should take no new
  task while it is. ``resume_work`` clears it and lifts the throttle. Handlers run after the default. A
  ``drain`` or ``throttle`` issued before the latest ``resume_work`` (delivered late) is superseded: ``done``.
- ``clear_cache``: the handler; without one, ``failed`` ("no handler").
- ``stop`` / ``restart``: the handler instead of the default (``done`` when it returns; one calling
  ``sys.exit`` has the agent closed and ``exit_process`` called with its code). The default drains, stops
  the heartbeat loop, flushes and closes the cost records (a call admitted then is refused, ``closed``),
  acknowledges ``done``, closes the agent (waiting for its publishes), then calls ``exit_process(code)``: 0
  for stop, 75 (``EX_TEMPFAIL``) for restart so a supervisor (systemd ``Restart=on-failure``, Kubernetes,
  Cloud Run) starts the process again. All within one budget; ``exit_process`` is called by the command's
  ``deadline`` at the latest (a watchdog), even if closing hangs. A ``restart``
  issued before this agent was made (with ``RESTART_SLACK_S`` for clock skew) is acknowledged ``done``
  without exiting again: the process has restarted since (a re-sent restart must not loop). Only an agent
  owning its process exits by default (``exit_process`` given, or its own :meth:`listen` and no other open
  agent); one sharing it is closed alone and acknowledges ``failed`` ("shared process: pass exit_process").

Handlers of ``stop`` and ``restart``, and the default, run on a thread of their own (closing the agent
closes the listener whose thread delivered the command); the others run on the listener's thread, so they
should return quickly (start a thread for long work) and must not close the agent (closing the listener
would wait for the thread running the handler).

The default ``exit_process`` (:func:`exit_now`) flushes the log handlers and standard streams, then calls
``os._exit``: the command arrives on a listener thread, where ``sys.exit`` would only end that thread, and a
signal to the main thread (``_thread.interrupt_main``, ``SIGTERM``) depends on what the program does with
it and cannot carry the exit code 75. The agent was closed just before, so nothing of the fleet's is lost;
pass ``exit_process=`` to end the program another way.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime
from typing import TYPE_CHECKING, overload

from fleet_agent.contracts import AckState, Command, CommandAck, CommandType, EventType, utcnow

if TYPE_CHECKING:
    from fleet_agent.commands import CommandListener
    from fleet_agent.costs import CostRecorder

log = logging.getLogger("fleet_agent")

#: A handler of one command type: takes the command, returns None; an exception acknowledges ``failed``.
Handler = Callable[[Command], None]
#: Exit codes of the default ``stop`` and ``restart``.
EXIT_STOP = 0
EXIT_RESTART = 75
#: Seconds the default ``stop``/``restart`` takes at most when the command names no deadline, and when
#: its deadline is (nearly) past: closing cleanly takes a moment.
DEFAULT_EXIT_S = 30.0
MIN_EXIT_S = 3.0
#: A ``restart`` issued this long before the agent was made still restarts it (clock skew); older: done.
RESTART_SLACK_S = 5.0
#: How many (command id, state) acknowledgements a process remembers.
ACK_MEMORY = 4096
DETAIL_CHARS = 200

_monotonic = time.monotonic  # the exit's clock (replaced by tests)
#: Every agent made in this process (weakly): the default stop/restart exits only the only open one.
_AGENTS: weakref.WeakSet[Remediation] = weakref.WeakSet()


def exit_now(code: int) -> None:
    """The default ``exit_process``: flush the log handlers and stdout/stderr, then ``os._exit(code)``."""
    for logger in (logging.getLogger(), log):
        for handler in logger.handlers:
            try:
                handler.flush()
            except Exception:  # exiting anyway
                continue
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # exiting anyway
            continue
    os._exit(code)


class Remediation:
    """The remediation half of :class:`~fleet_agent.FleetAgent`, which provides the state declared here."""

    _handlers: dict[CommandType, Handler]
    _drain: Command | None
    _drain_lock: threading.Lock
    _resumed_at: datetime | None
    _given_exit: Callable[[int], None] | None
    _closed: bool  # FleetAgent's
    _listener: CommandListener | None  # AgentCommands': set by listen()
    _exiting: bool
    _exited: bool
    _exit_lock: threading.Lock
    _acks: OrderedDict[tuple[str, AckState], str]  # -> the detail sent
    _heartbeats_paused: bool
    _made_at: datetime
    _costs: CostRecorder | None

    if TYPE_CHECKING:  # FleetAgent's

        @property
        def agent_id(self) -> str: ...

        @property
        def costs(self) -> CostRecorder: ...

        def _publish(self, event_type: EventType, event: CommandAck) -> Future[str]: ...

        def stop(self, timeout: float | None = 10.0) -> bool: ...

        def close(self, timeout: float | None = 10.0) -> bool: ...

    def _init_remediation(self, exit_process: Callable[[int], None] | None) -> None:
        self._handlers = {}
        self._drain, self._resumed_at = None, None
        self._drain_lock = threading.Lock()
        self._given_exit = exit_process
        _AGENTS.add(self)
        self._exiting = self._exited = False
        self._exit_lock = threading.Lock()
        self._acks = OrderedDict()
        self._heartbeats_paused = False
        self._made_at = utcnow()

    # -- the agent's API -----------------------------------------------------------------------

    @overload
    def on_command(self, command_type: CommandType) -> Callable[[Handler], Handler]: ...

    @overload
    def on_command(self, command_type: CommandType, handler: Handler) -> Handler: ...

    def on_command(
        self, command_type: CommandType, handler: Handler | None = None
    ) -> Handler | Callable[[Handler], Handler]:
        """Run ``handler(command)`` for each new command of ``command_type`` (one of the remediation commands);
        without ``handler``, a decorator. A later handler replaces the earlier one."""
        if command_type not in (
            CommandType.RESTART,
            CommandType.STOP,
            CommandType.DRAIN,
            CommandType.THROTTLE,
            CommandType.CLEAR_CACHE,
            CommandType.RESUME_WORK,
        ):
            raise ValueError(f"{command_type} is not a remediation command")

        def register(fn: Handler) -> Handler:
            self._handlers[command_type] = fn
            return fn

        return register if handler is None else register(handler)

    @property
    def draining(self) -> bool:
        """True from a ``drain`` until a ``resume_work``: take no new task."""
        return self._drain is not None

    @property
    def throttle(self) -> int | None:
        """The calls-per-minute cap a ``throttle`` puts on the agent now, or None."""
        return self.costs.throttle

    @property
    def heartbeats_paused(self) -> bool:
        return self._heartbeats_paused

    def pause_heartbeats(self) -> None:
        """A test and diagnostic aid: the heartbeat loop sends nothing until :meth:`resume_heartbeats`, while
        the command listener goes on (an agent whose main loop froze, as the fleet sees it)."""
        self._heartbeats_paused = True

    def resume_heartbeats(self) -> None:
        self._heartbeats_paused = False

    # -- carrying out ----------------------------------------------------------------------------

    def _remediate(self, command: Command) -> None:
        """A remediation command new to the agent (the recorder applied it already: a throttle is in force)."""
        self._ack(command, AckState.ACKNOWLEDGED)
        kind, handler = command.command, self._handlers.get(command.command)
        if kind in (CommandType.STOP, CommandType.RESTART):
            self._stop_or_restart(command, handler)
            return
        if kind is CommandType.THROTTLE and command.calls_per_minute is None:
            self._ack(command, AckState.FAILED, "no calls_per_minute")
            return
        if kind is CommandType.CLEAR_CACHE and handler is None:
            self._ack(command, AckState.FAILED, "no handler")
            return
        if not self._take_drain(command):
            self._ack(command, AckState.DONE, "superseded")  # a resume_work issued after it came first
            return
        self._run_handler(command, handler, _done_detail(command))

    def _take_drain(self, command: Command) -> bool:
        """Apply a drain or resume_work to :attr:`draining` (newest wins, under a lock); False for a
        ``drain`` or ``throttle`` issued before the latest ``resume_work`` (reordered: superseded)."""
        kind, at = command.command, command.issued_at
        with self._drain_lock:
            if kind is CommandType.THROTTLE:
                resumed = self.costs.resumed_at  # the recorder ignored it already (cost_holds)
                return resumed is None or at >= resumed
            if kind is CommandType.DRAIN:
                if self._resumed_at is not None and at < self._resumed_at:
                    return False
                if self._drain is None or self._drain.issued_at <= at:
                    self._drain = command
            elif kind is CommandType.RESUME_WORK:
                self._resumed_at = at if self._resumed_at is None else max(self._resumed_at, at)
                if self._drain is None or self._drain.issued_at <= at:
                    self._drain = None
        return True

    def _run_handler(self, command: Command, handler: Handler | None, detail: str) -> bool:
        """Run the handler (if any) and acknowledge ``done`` or ``failed``; True when done."""
        if handler is not None:
            try:
                handler(command)
            except Exception as exc:
                log.warning("agent %s: the %s handler failed", self.agent_id, command.command.value, exc_info=True)
                self._ack(command, AckState.FAILED, f"handler raised {type(exc).__name__}")
                return False
        self._ack(command, AckState.DONE, detail)
        return True

    def _stop_or_restart(self, command: Command, handler: Handler | None) -> None:
        restart = command.command is CommandType.RESTART
        if restart and (self._made_at - command.issued_at).total_seconds() > RESTART_SLACK_S:
            self._ack(command, AckState.DONE, "restarted since")
            return
        code = EXIT_RESTART if restart else EXIT_STOP
        target: Callable[[], object]
        if handler is not None:
            target = functools.partial(self._run_exit_handler, command, handler)
        else:
            with self._exit_lock:
                exiting, self._exiting = self._exiting, True
            if exiting:  # a second stop/restart while exiting: the first one's exit stands
                self._ack(command, AckState.DONE, "exiting already")
                return
            with self._drain_lock:
                self._drain = command  # no new task from now on (S4: the calls are refused once closed)
            target = functools.partial(self._exit_cleanly, command, code, self._owns_process())
        name = f"fleet-{command.command.value}-{self.agent_id}"
        try:
            threading.Thread(target=target, name=name, daemon=True).start()
        except RuntimeError as exc:  # no thread to be had (interpreter shutting down, thread limit)
            self._exiting = False
            self._ack(command, AckState.FAILED, f"no thread: {exc}")

    def _owns_process(self) -> bool:
        """Whether the default stop/restart may end the process: ``exit_process`` was given, or this agent
        listens through its own :meth:`listen` and is the only open agent in the process."""
        if self._given_exit is not None:
            return True
        return self._listener is not None and not any(a is not self and not a._closed for a in list(_AGENTS))

    def _run_exit_handler(self, command: Command, handler: Handler) -> None:
        """A stop/restart handler; one that calls ``sys.exit`` (on this thread, where it would end only the
        thread) has the agent closed, then the process exited with its code."""
        try:
            self._run_handler(command, handler, "handled")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
            self._ack(command, AckState.DONE, f"handler exited with code {code}")
            try:
                self.close(DEFAULT_EXIT_S / 3)
            finally:
                self._exit_once(code)

    def _exit_cleanly(self, command: Command, code: int, owns_process: bool) -> None:
        """The default stop/restart: close everything, then exit, by the deadline at the latest. An agent
        sharing its process (see :meth:`_owns_process`) is closed, and acknowledges ``failed``: the process
        goes on, so the fleet escalates."""
        left = DEFAULT_EXIT_S  # no deadline; one already past (a late delivery, skew) leaves MIN_EXIT_S
        if command.deadline is not None:
            left = max((command.deadline - utcnow()).total_seconds(), MIN_EXIT_S)
        watchdog = threading.Timer(left, self._exit_once, (code,))
        watchdog.daemon = True
        if owns_process:
            watchdog.start()
        end = _monotonic() + max(left - MIN_EXIT_S / 2, MIN_EXIT_S / 2)  # one deadline for every step

        def remaining() -> float:
            return max(end - _monotonic(), 0.0)

        try:
            self.stop(remaining())  # the heartbeat loop ends; its publishes are confirmed
            if self._costs is not None:
                self._costs.close(remaining())
            if owns_process:
                self._ack(command, AckState.DONE, f"exiting with code {code}")
            else:
                self._ack(command, AckState.FAILED, "shared process: pass exit_process")
            self.close(remaining())  # waits for the acknowledgement's publish
        except Exception:
            log.exception("agent %s: closing before the %s exit failed", self.agent_id, command.command.value)
        finally:
            watchdog.cancel()
            if owns_process:
                self._exit_once(code)

    def _exit_once(self, code: int) -> None:
        with self._exit_lock:
            exited, self._exited = self._exited, True
        if exited:
            return
        log.warning("agent %s: exiting with code %d (fleet command)", self.agent_id, code)
        (self._given_exit or exit_now)(code)

    def _ack(self, command: Command, state: AckState, detail: str = "") -> None:
        """Publish one acknowledgement, once per (command id, state) in this process; never raises."""
        key, detail = (command.command_id, state), detail[:DETAIL_CHARS]
        with self._exit_lock:
            if key in self._acks:
                return
            self._acks[key] = detail
            while len(self._acks) > ACK_MEMORY:
                self._acks.popitem(last=False)
        self._send_ack(command, state, detail)

    def _reack(self, command: Command) -> None:
        """A remediation command seen already (re-sent by the fleet, whose copy of our ack was lost): not run
        again; the furthest acknowledgement sent for it (done/failed, else acknowledged) is sent again."""
        with self._exit_lock:
            sent = [(state, self._acks[(command.command_id, state)]) for state in _FURTHEST_FIRST
                    if (command.command_id, state) in self._acks]  # fmt: skip
        if sent:
            self._send_ack(command, *sent[0])

    def _send_ack(self, command: Command, state: AckState, detail: str) -> None:
        ack = CommandAck(
            agent_id=self.agent_id,
            command_id=command.command_id,
            command=command.command,
            state=state,
            detail=detail,
            sent_at=utcnow(),
        )
        try:
            self._publish(EventType.COMMAND_ACK, ack).add_done_callback(_log_failure)
        except Exception as exc:  # a closed agent, a publisher error: the fleet re-sends, then escalates
            log.warning("agent %s: could not acknowledge %s as %s: %s", self.agent_id, command.command_id, state, exc)


_FURTHEST_FIRST = (AckState.DONE, AckState.FAILED, AckState.ACKNOWLEDGED)


def _done_detail(command: Command) -> str:
    if command.command is CommandType.THROTTLE:
        until = f" until {command.until.isoformat(timespec='seconds')}" if command.until else ""
        return f"throttled to {command.calls_per_minute} calls/min{until}"
    return {CommandType.DRAIN: "draining", CommandType.RESUME_WORK: "resumed"}.get(command.command, "handled")


def _log_failure(future: Future[str]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("a command acknowledgement was not published: %s", future.exception())
