"""From the Market's campaigns and warehouses: the warehouse groups, the v3 campaigns, and where
today's settings differ (`stocksync discover`, the service's routing check).

Pure: the Market's answers come in as `MarketCampaign`/`MarketWarehouse`, the settings in force as
plain groups and v3 targets; nothing here reads or changes anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# placementType values whose stock the seller sends (Express is FBS with an express warehouse).
SELLER_STOCK_TYPES = frozenset({"FBS", "DBS"})


@dataclass(frozen=True, slots=True)
class MarketCampaign:
    """A campaign as `GET /v2/campaigns` lists it."""

    id: int
    business_id: int
    placement_type: str
    api_availability: str = "AVAILABLE"


@dataclass(frozen=True, slots=True)
class MarketWarehouse:
    """A warehouse as `POST /v2/businesses/{id}/warehouses` lists it; group from `groupInfo`."""

    id: int
    campaign_id: int
    group_id: int | None = None
    group_name: str | None = None


@dataclass(frozen=True, slots=True)
class V3Route:
    """Where a v3 campaign's stock goes."""

    business_id: int
    warehouse_id: int


@dataclass(frozen=True)
class Discovery:
    """What the Market says the settings should be, and how today's differ."""

    warehouse_groups: list[list[int]]
    v3_campaigns: dict[int, V3Route]
    differences: list[str]
    # Facts worth saying that are no difference: FBY/LaaS campaigns, disabled API access.
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        """The `--json` shape: warehouse_groups, v3_campaigns (keys as strings), differences."""
        return {
            "warehouse_groups": self.warehouse_groups,
            "v3_campaigns": v3_json(self.v3_campaigns),
            "differences": self.differences,
            "notes": self.notes,
        }


def v3_json(routes: Mapping[int, V3Route]) -> dict[str, dict[str, int]]:
    """`STOCKSYNC_V3_CAMPAIGNS`' JSON shape of routes."""
    return {
        str(c): {"business_id": r.business_id, "warehouse_id": r.warehouse_id}
        for c, r in routes.items()
    }


def _market_groups(
    campaigns: Sequence[MarketCampaign], warehouses: Sequence[MarketWarehouse]
) -> dict[int, list[int]]:
    """groupInfo.id -> its campaigns, in the Market's campaign order."""
    order = {c.id: i for i, c in enumerate(campaigns)}
    members: dict[int, set[int]] = {}
    for w in warehouses:
        if w.group_id is not None and w.campaign_id in order:
            members.setdefault(w.group_id, set()).add(w.campaign_id)
    return {gid: sorted(ids, key=order.__getitem__) for gid, ids in members.items()}


def _ordered(market: dict[int, list[int]], today: Sequence[Sequence[int]]) -> dict[int, list[int]]:
    """Each Market group ordered to keep today's keys: a today's group's first campaign first
    (the key is group[0]), then today's order, then the Market's."""
    today_position = {c: (g, i) for g, group in enumerate(today) for i, c in enumerate(group)}
    today_firsts = [group[0] for group in today if group]
    ordered: dict[int, list[int]] = {}
    for gid, members in market.items():
        first = next((f for f in today_firsts if f in members), None)
        far = (len(today), 0)
        rest = sorted(
            (c for c in members if c != first),
            key=lambda c: today_position.get(c, far),  # stable: the Market's order breaks ties
        )
        ordered[gid] = ([first] if first is not None else []) + rest
    return ordered


def discover(
    campaigns: Sequence[MarketCampaign],
    warehouses: Sequence[MarketWarehouse],
    today_groups: Sequence[Sequence[int]],
    today_v3: Mapping[int, V3Route],
) -> Discovery:
    """The settings that match the Market, and one sentence per way today's differ."""
    by_id = {c.id: c for c in campaigns}
    groups = _ordered(_market_groups(campaigns, warehouses), today_groups)
    # Groups in the order of today's groups where they overlap one, then the Market's.
    today_rank = {c: g for g, group in enumerate(today_groups) for c in group}
    group_list = sorted(
        groups.items(), key=lambda item: min(today_rank.get(c, len(today_groups)) for c in item[1])
    )
    group_of = {c: gid for gid, members in groups.items() for c in members}

    notes: list[str] = []
    v3: dict[int, V3Route] = {}
    for c in campaigns:
        if c.api_availability != "AVAILABLE":
            notes.append(f"campaign {c.id}: API access at the Market is {c.api_availability}")
        if c.id in group_of:
            continue
        if c.placement_type not in SELLER_STOCK_TYPES:
            notes.append(
                f"campaign {c.id} is {c.placement_type}: the Market keeps its stock, "
                "neither v2 nor v3 sends it"
            )
            continue
        own = [w.id for w in warehouses if w.campaign_id == c.id]
        if not own:
            notes.append(f"campaign {c.id} has no warehouse at the Market: not sent by v3")
            continue
        if len(own) > 1:
            notes.append(
                f"campaign {c.id} has warehouses {own} at the Market: v3 sends to the first, "
                f"{own[0]}"
            )
        v3[c.id] = V3Route(c.business_id, own[0])

    differences = _differences(by_id, groups, v3, today_groups, today_v3)
    return Discovery(
        warehouse_groups=[members for _, members in group_list],
        v3_campaigns=v3,
        differences=differences,
        notes=notes,
    )


@dataclass(frozen=True)
class _Views:
    """The Market's routing and today's, side by side."""

    by_id: Mapping[int, MarketCampaign]
    groups: Mapping[int, list[int]]
    group_of: Mapping[int, int]
    v3: Mapping[int, V3Route]
    today_group_of: Mapping[int, list[int]]
    today_v3: Mapping[int, V3Route]


def _differences(
    by_id: Mapping[int, MarketCampaign],
    groups: Mapping[int, list[int]],
    v3: Mapping[int, V3Route],
    today_groups: Sequence[Sequence[int]],
    today_v3: Mapping[int, V3Route],
) -> list[str]:
    """One sentence per campaign whose routing here is not the Market's."""
    views = _Views(
        by_id=by_id,
        groups=groups,
        group_of={c: gid for gid, members in groups.items() for c in members},
        v3=v3,
        today_group_of={c: list(group) for group in today_groups for c in group},
        today_v3=today_v3,
    )
    out = [
        f"campaign {c} in STOCKSYNC_WAREHOUSE_GROUPS is not a campaign of this key"
        for group in today_groups
        for c in group
        if c not in by_id
    ]
    out += [
        f"campaign {c} in STOCKSYNC_V3_CAMPAIGNS is not a campaign of this key"
        for c in today_v3
        if c not in by_id
    ]
    for c in by_id:
        sentence = _group_difference(c, views) if c in views.group_of else _v3_difference(c, views)
        if sentence:
            out.append(sentence)
    return out


def _group_difference(c: int, views: _Views) -> str | None:
    """How a campaign the Market groups is routed differently here, if it is."""
    gid = views.group_of[c]
    market, here = views.groups[gid], views.today_group_of.get(c)
    if here is None:
        where = "sent by v3" if c in views.today_v3 else "standalone"
        return f"campaign {c} is in group {gid} at the Market but {where} here"
    if set(here) != set(market):
        return f"campaign {c} is in group {gid} {market} at the Market but in group {here} here"
    return None


def _v3_difference(c: int, views: _Views) -> str | None:
    """How a campaign in no Market group is routed differently here, if it is."""
    here = views.today_group_of.get(c)
    route, today = views.v3.get(c), views.today_v3.get(c)
    suffix = ": v3" if route is not None else ""
    if here is not None:
        return (
            f"campaign {c} is in group {here} here but in no warehouse group at the Market{suffix}"
        )
    if route is not None and today is None:
        return f"campaign {c} is sent by v2 here but has no warehouse group at the Market: v3"
    if route is not None and today is not None and route != today:
        return (
            f"campaign {c} goes to business {today.business_id} warehouse {today.warehouse_id} "
            f"here but the Market has business {route.business_id} warehouse {route.warehouse_id}"
        )
    if route is None and today is not None:
        return (
            f"campaign {c} is in STOCKSYNC_V3_CAMPAIGNS here but is "
            f"{views.by_id[c].placement_type} at the Market with no warehouse v3 can send to"
        )
    return None
