"""Files of the Batch API (uploaded inputs, produced outputs and errors), kept in Redis.

A file is one hash: its bytes and its description. Files expire with the batches that use
them (``MODELGATE_JOB_TTL_S``), so nothing lingers; any gateway replica serves any file.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis.asyncio as aredis

from contract.jobs import Keys
from gateway.connections import redis_errors
from gateway.errors import NotFound


class UnknownFile(NotFound):
    code = "unknown_file"


class FileStore:
    """Stores and reads files by id."""

    def __init__(self, conn: aredis.Redis, keys: Keys, ttl_s: int) -> None:
        self.conn = conn
        self.keys = keys
        self.ttl_s = ttl_s

    async def put(
        self, content: bytes, filename: str, purpose: str, file_id: str | None = None
    ) -> dict[str, Any]:
        """Store ``content``; returns its description (OpenAI's file object)."""
        now = int(time.time())
        file_id = file_id or f"file-{uuid.uuid4().hex}"
        info: dict[str, Any] = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": now,
            "expires_at": now + self.ttl_s,
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        key = self.keys.file(file_id)
        async with redis_errors():
            pipe = self.conn.pipeline(transaction=True)
            pipe.hset(key, mapping={"info": json.dumps(info), "content": content})
            pipe.expire(key, self.ttl_s)
            await pipe.execute()
        return info

    async def info(self, file_id: str) -> dict[str, Any]:
        async with redis_errors():
            raw = await self.conn.hget(self.keys.file(file_id), "info")
        if raw is None:
            raise UnknownFile(f"no file {file_id!r} (unknown or expired)")
        info: dict[str, Any] = json.loads(raw)
        return info

    async def content(self, file_id: str) -> bytes:
        async with redis_errors():
            raw = await self.conn.hget(self.keys.file(file_id), "content")
        if not isinstance(raw, bytes):
            raise UnknownFile(f"no file {file_id!r} (unknown or expired)")
        return raw

    async def delete(self, file_id: str) -> None:
        async with redis_errors():
            removed = await self.conn.delete(self.keys.file(file_id))
        if not removed:
            raise UnknownFile(f"no file {file_id!r} (unknown or expired)")
