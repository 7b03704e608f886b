"""Library logging: one `paddlemix` logger, and warnings that are said once per process."""

import logging

logger = logging.getLogger("paddlemix")

_already_warned = set()


def warn_once(message: str) -> None:
    """Log `message` as a warning the first time it is seen in this process only."""
    if message in _already_warned:
        return
    _already_warned.add(message)
    logger.warning(message)
