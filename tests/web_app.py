"""The FastAPI app `tests/test_web.py` serves with a real uvicorn process: one endpoint
behind a `RateLimit` dependency, one behind the middleware's policy-free limit, on the
Redis server named by BANTAI_WEB_REDIS_URL (keys under BANTAI_WEB_PREFIX)."""

from __future__ import annotations

import os

from fastapi import Depends, FastAPI

from bantai import create_async_redis_storage, rate_limit_schema
from bantai.web import RateLimit

storage = create_async_redis_storage(
    {"url": os.environ["BANTAI_WEB_REDIS_URL"]},
    rate_limit_schema,
    {"prefix": os.environ["BANTAI_WEB_PREFIX"]},
)
limited = RateLimit(storage, {"type": "fixed-window", "limit": 3, "period": "1h"}, name="api")
app = FastAPI()


@app.get("/search", dependencies=[Depends(limited)])
async def search() -> dict[str, str]:
    return {"results": "none"}
