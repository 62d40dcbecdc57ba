"""JetStream topology, journal append with optimistic concurrency, readers, consumers, leases."""

from streams._consumer import (
    ConsumerSpec,
    MsgSink,
    delete_consumer,
    ensure_consumer,
    num_delivered,
    pull_loop,
    stream_seq,
)
from streams._deadletters import (
    DeadLetter,
    dead_letter,
    dead_letter_at,
    dead_letter_msg,
    dead_letters,
    reinject,
)
from streams._inbox import Inbox
from streams._inflight import InFlight, Tasks, take_slot
from streams._journal import (
    GENESIS,
    HDR_HASH,
    HDR_N,
    HDR_PREV,
    HDR_TYPE,
    Journal,
    Record,
    StoredEvent,
    chain,
    decode_record,
    read_records,
    verify_chain,
)
from streams._jsapi import ApiError, NatsAuth, api_request, connect
from streams._leases import Lease, Leases
from streams._markers import EffectMarkers
from streams._objects import Objects, PayloadLimits, object_problem
from streams._protocols import InboxWriter, JournalStore, open_inbox, open_journal
from streams._publish import PubAck, publish, publish_checked, retrying
from streams._subjects import Subjects, partition_of
from streams._topology import (
    MIN_API_LEVEL,
    MIN_SERVER,
    ServerFeatures,
    TopologyConfig,
    check_server,
    ensure_topology,
)

__all__ = [
    "ApiError",
    "ConsumerSpec",
    "DeadLetter",
    "EffectMarkers",
    "GENESIS",
    "HDR_HASH",
    "HDR_N",
    "HDR_PREV",
    "HDR_TYPE",
    "InFlight",
    "Inbox",
    "InboxWriter",
    "Journal",
    "JournalStore",
    "Lease",
    "Leases",
    "MIN_API_LEVEL",
    "MIN_SERVER",
    "MsgSink",
    "NatsAuth",
    "Objects",
    "PayloadLimits",
    "PubAck",
    "Record",
    "ServerFeatures",
    "StoredEvent",
    "Subjects",
    "Tasks",
    "TopologyConfig",
    "api_request",
    "chain",
    "check_server",
    "connect",
    "dead_letter",
    "dead_letter_at",
    "dead_letter_msg",
    "dead_letters",
    "decode_record",
    "delete_consumer",
    "ensure_consumer",
    "ensure_topology",
    "num_delivered",
    "object_problem",
    "open_inbox",
    "open_journal",
    "partition_of",
    "publish",
    "publish_checked",
    "pull_loop",
    "read_records",
    "reinject",
    "retrying",
    "stream_seq",
    "take_slot",
    "verify_chain",
]
