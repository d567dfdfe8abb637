"""Which version served which request, remembered for a bounded time so that rewards sent later
(``POST /v2/models/{endpoint}/feedback``) reach the right arm."""

import time
from collections import OrderedDict
from dataclasses import dataclass

from turnout.errors import AlreadyRecorded, ModelNotFound, quoted


@dataclass(slots=True)
class _Served:
    version: str
    expires: float
    rewarded: bool = False


class ServedRequests:
    """Request ids and their versions, oldest dropped first beyond ``max_entries`` or after
    ``ttl_s`` seconds."""

    def __init__(self, ttl_s: float, max_entries: int) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._served: OrderedDict[tuple[str, str], _Served] = OrderedDict()

    def remember(self, endpoint: str, request_id: str, version: str) -> None:
        """Note that ``version`` served ``request_id``."""
        key = (endpoint, request_id)
        self._served.pop(key, None)
        self._served[key] = _Served(version, time.monotonic() + self._ttl_s)
        while len(self._served) > self._max_entries:
            self._served.popitem(last=False)

    def claim(self, endpoint: str, request_id: str) -> str:
        """The version that served ``request_id``, marked as rewarded. ModelNotFound when the id
        is unknown or expired; AlreadyRecorded when it was rewarded before."""
        self._expire()
        served = self._served.get((endpoint, request_id))
        if served is None:
            raise ModelNotFound(
                f"no recent request {quoted(request_id)} on endpoint {quoted(endpoint)} "
                f"(ids are remembered for {self._ttl_s:g} s)"
            )
        if served.rewarded:
            raise AlreadyRecorded(f"request {quoted(request_id)} already has a reward")
        served.rewarded = True
        return served.version

    def _expire(self) -> None:
        now = time.monotonic()
        while self._served:
            key, oldest = next(iter(self._served.items()))
            if oldest.expires > now:
                return
            del self._served[key]
