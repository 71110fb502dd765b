"""Redis ``SET`` semantics behind the session-operations seam (``SessionService.put``),
on a real engine: the create-or-update decision is the service's, not the protocol's."""

from __future__ import annotations

import pytest

from tokmesh.domain.clock import ManualClock
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.ids import new_session_id
from tokmesh.domain.tokens import generate_token
from tokmesh.services.sessions import local_sessions

from .conftest import CTX, EngineRunner


async def test_put_creates_then_updates_and_refuses_what_set_cannot_do(
    runner: EngineRunner, clock: ManualClock
) -> None:
    svc = local_sessions(await runner.start())
    sid = new_session_id()
    token = generate_token()
    with pytest.raises(TokMeshError) as info:
        await svc.put(CTX, sid, user_id="u1")
    assert info.value.error is E.ARG_MISSING
    assert await svc.put(CTX, sid, user_id="u1", token=token, ttl_seconds=60) is True
    assert svc.validate(token).id == sid
    assert await svc.put(CTX, sid, data={"k": "v"}) is False
    updated = svc.get(sid)
    assert (updated.data, updated.version) == ({"k": "v"}, 2)
    for bad in ({"token": generate_token()}, {"user_id": "someone-else"}):
        with pytest.raises(TokMeshError) as info:
            await svc.put(CTX, sid, **bad)  # type: ignore[arg-type]
        assert info.value.error is E.ARG_INVALID
    # Expired counts as absent: SET creates the session afresh, with the new token.
    clock.advance(61_000)
    fresh = generate_token()
    assert await svc.put(CTX, sid, user_id="u2", token=fresh) is True
    assert (svc.validate(fresh).user_id, svc.get(sid).version) == ("u2", 1)
