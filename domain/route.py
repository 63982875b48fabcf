"""Where a key's stock goes: a *route*, ('v2', campaign) or ('v3', business), and its table key.

Keys stay (group, sku) whatever the method. A v2 route is a group's sending campaign and takes a
PUT per campaign; a v3 route is a business and takes `POST /v3/businesses/{id}/offers/stocks/update`
for the keys of all its campaigns (each campaign one partner warehouse). The tables that count
requests, claims and campaign health (`market_request`, `push_claim`, `campaign`) hold a route by
its `key`: the campaign id for v2, minus the business id for v3, so one limiter, one claim table and
one health table serve both kinds of resource.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class Method(StrEnum):
    """How stock is sent: the v2 PUT per campaign or the v3 update per business."""

    V2 = "v2"
    V3 = "v3"


@dataclass(frozen=True, slots=True)
class Route:
    """One destination of requests: a v2 campaign or a v3 business."""

    method: Method
    target: int

    @property
    def key(self) -> int:
        """The route's id in the tables: the campaign id (v2) or minus the business id (v3)."""
        return self.target if self.method is Method.V2 else -self.target

    @classmethod
    def of_key(cls, key: int) -> Route:
        """The route a table key stands for."""
        return cls(Method.V2, key) if key > 0 else cls(Method.V3, -key)


@dataclass(frozen=True, slots=True)
class V3Destination:
    """A v3 campaign's business and partner warehouse."""

    business_id: int
    warehouse_id: int


class Routing:
    """The configured v3 campaigns; every other group key goes by v2 to itself."""

    def __init__(self, v3: Mapping[int, V3Destination]) -> None:
        self.v3 = dict(v3)
        self._by_business: dict[int, list[int]] = {}
        for campaign, destination in sorted(self.v3.items()):
            self._by_business.setdefault(destination.business_id, []).append(campaign)

    def route_of(self, group_id: int) -> Route:
        """The route of a key's group."""
        destination = self.v3.get(group_id)
        if destination is None:
            return Route(Method.V2, group_id)
        return Route(Method.V3, destination.business_id)

    def campaigns_of(self, business_id: int) -> list[int]:
        """The v3 campaigns of a business, in id order (none when it is not configured)."""
        return list(self._by_business.get(business_id, []))

    def warehouse_of(self, campaign_id: int) -> int:
        """A v3 campaign's partner warehouse (KeyError for a v2 campaign)."""
        return self.v3[campaign_id].warehouse_id

    def is_current(self, route: Route) -> bool:
        """True when `route` is still configured: a v2 route of a campaign now sent by v3, or a
        business no campaign names any more, is stale (its claims must send nothing)."""
        if route.method is Method.V2:
            return route.target not in self.v3
        return route.target in self._by_business
