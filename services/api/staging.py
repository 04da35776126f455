"""Sweeping the store's staging area (``tmp/``) from the API: once at start, then periodically.

A process killed mid-upload (or mid-unpack) leaves its staging files behind; nothing else would ever remove them.
Anything untouched for ``MONA_STAGING_MAX_AGE_S`` seconds is removed, far longer than any live upload is idle.
"""

from __future__ import annotations

import asyncio
import logging

from services.common.storage import ArtifactStore

logger = logging.getLogger(__name__)


def sweep_interval(max_age_s: float) -> float:
    """Half the age threshold, between 1 s and 10 minutes."""
    return max(1.0, min(max_age_s / 2, 600.0))


def sweep_once(store: ArtifactStore, max_age_s: float) -> int:
    """One sweep; returns the bytes freed. A filesystem error is logged and retried at the next sweep."""
    try:
        removed, freed = store.sweep_staging(max_age_s)
    except OSError as exc:
        logger.warning("staging sweep failed (retrying later): %s", exc)
        return 0
    if removed:
        logger.info("swept %d stale staging entr(ies), %d bytes, older than %.0f s", removed, freed, max_age_s)
    return freed


async def sweep_periodically(store: ArtifactStore, max_age_s: float) -> None:
    """Sweep every ``sweep_interval`` seconds until cancelled (the app's lifespan ends)."""
    while True:
        await asyncio.sleep(sweep_interval(max_age_s))
        await asyncio.to_thread(sweep_once, store, max_age_s)
