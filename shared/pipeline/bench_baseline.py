"""The bare handler `make bench` compares against: one Firestore write per message, nothing else."""

from __future__ import annotations

import logging

from shared.pipeline.decoding import PushedMessage
from shared.platform import logs
from shared.store import db

log = logs.get_logger("bench")


def write_one(message: PushedMessage) -> None:
    db.client().collection("bench_baseline").document(message.message_id).set({"size": len(message.raw)})
    logs.log(log, "baseline accepted", logging.INFO, outcome="accepted", firestore_reads=0, firestore_writes=1)
