"""The one mapping between tables and state, on SQLite and Postgres: for every
generated state, ``load(apply(s)) == s`` whatever the tables held before, and the
state read back from a revision's documents translates to the same bytes as the
state read from the tables."""

from __future__ import annotations

import json
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from sqlalchemy import delete

from controlplane.db.engine import create_engine, create_sessionmaker
from controlplane.db.models import SigningKey, TenantCredential
from controlplane.db.revisions import RevisionRepository
from controlplane.db.state import apply_state, load_access, load_state
from controlplane.domain.clock import utcnow
from controlplane.domain.state import DesiredState
from controlplane.xds.translate import translate
from tests.strategies import desired_states


def _wire(state: DesiredState) -> dict[str, dict[str, bytes]]:
    return {
        type_url: {name: m.SerializeToString(deterministic=True) for name, m in by_name.items()}
        for type_url, by_name in translate(state).items()
    }


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(state=desired_states())
async def test_load_of_apply_is_the_state_and_revisions_agree(
    database_url: str, state: DesiredState
) -> None:
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            # The key set comes from stored signing keys, which no state carries.
            await session.execute(delete(SigningKey))
            # A credential's id belongs to one tenant for ever; examples share this
            # database, and a later one may give an earlier one's id to another tenant,
            # which no real history does: each example starts without credentials.
            await session.execute(delete(TenantCredential))
            if state.jwks is not None:
                for number, jwk in enumerate(json.loads(state.jwks)["keys"]):
                    session.add(
                        SigningKey(
                            kid=jwk["kid"],
                            algorithm=jwk["alg"],
                            private_key=f"not used {number}",
                            public_jwk=jwk,
                            created_at=utcnow(),
                        )
                    )
            await apply_state(session, state)
            loaded = await load_state(session)
            assert loaded == replace(state, revision=loaded.revision)

            revisions = RevisionRepository(session)
            changed = {m.name: m for m in loaded.models}
            changed.update(
                (name, None)
                for name in await revisions.model_digests(await revisions.current())
                if name not in changed
            )
            revision = await revisions.bump(
                actor="test",
                action="test",
                request_id=None,
                models=changed,
                access=await load_access(session),
            )
            stored = await revisions.state_at(revision)
            assert stored == replace(loaded, revision=revision)
            assert _wire(stored) == _wire(loaded)
    finally:
        await engine.dispose()
