"""A real gRPC Pub/Sub Subscriber (Pull, Acknowledge), built from the client package's types.

No Pub/Sub emulator installs without gcloud, so the suite serves the two RPCs the feed uses,
over TLS, checking the bearer token, with a pull that waits for messages like the service's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from typing import Any

import grpc
from google.protobuf import empty_pb2, timestamp_pb2
from google.pubsub_v1 import types

from support.gcp_server import ACCESS_TOKEN, ThreadedGrpcServer

SERVICE = "google.pubsub.v1.Subscriber"


class PubSubServer(ThreadedGrpcServer):
    """One subscription's messages: published, pulled (outstanding) until acknowledged."""

    service = SERVICE

    def __init__(self, key_pem: bytes, cert_pem: bytes, port: int = 0) -> None:
        super().__init__(key_pem, cert_pem, port)
        self._ids = itertools.count(1)
        self.waiting: list[types.ReceivedMessage] = []  # published, not yet pulled
        self.outstanding: dict[str, types.ReceivedMessage] = {}  # pulled, not yet acked
        self.acked: list[str] = []
        self._arrived: asyncio.Event | None = None
        # The subscription that exists (any, when None): others are NOT_FOUND, as the service.
        self.subscription: str | None = None

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        self._arrived = asyncio.Event()
        return {
            "Pull": grpc.unary_unary_rpc_method_handler(
                self._pull,
                request_deserializer=types.PullRequest.deserialize,
                response_serializer=types.PullResponse.serialize,
            ),
            "Acknowledge": grpc.unary_unary_rpc_method_handler(
                self._acknowledge,
                request_deserializer=types.AcknowledgeRequest.deserialize,
                response_serializer=empty_pb2.Empty.SerializeToString,
            ),
        }

    def publish(self, attributes: dict[str, str], data: bytes = b"{}") -> None:
        """What Secret Manager publishes to the topic this subscription follows."""

        def add() -> None:
            ack_id = f"ack-{next(self._ids)}"
            stamp = timestamp_pb2.Timestamp()
            stamp.FromSeconds(int(time.time()))
            message = types.PubsubMessage(
                data=data, attributes=attributes, message_id=ack_id, publish_time=stamp
            )
            self.waiting.append(types.ReceivedMessage(ack_id=ack_id, message=message))
            if self._arrived is not None:
                self._arrived.set()

        self._loop.call_soon_threadsafe(add)

    async def _check(self, context: grpc.aio.ServicerContext, subscription: str) -> None:
        metadata = dict(context.invocation_metadata() or ())
        if metadata.get("authorization") != f"Bearer {ACCESS_TOKEN}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no valid token")
        if self.subscription is not None and subscription != self.subscription:
            await context.abort(grpc.StatusCode.NOT_FOUND, "Resource not found")

    async def _pull(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._check(context, request.subscription)
        assert self._arrived is not None
        if not self.waiting:
            remaining = context.time_remaining() or 10.0
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), max(0.0, remaining - 0.05))
        taken = self.waiting[: request.max_messages]
        del self.waiting[: len(taken)]
        for item in taken:
            self.outstanding[item.ack_id] = item
        return types.PullResponse(received_messages=taken)

    async def _acknowledge(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._check(context, request.subscription)
        for ack_id in request.ack_ids:
            if self.outstanding.pop(ack_id, None) is not None:
                self.acked.append(ack_id)
        return empty_pb2.Empty()
