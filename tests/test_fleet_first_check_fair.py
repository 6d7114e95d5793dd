"""The first health checks take the oldest unchecked nodes first (server/inventory/first_check.py): a node registered
before a storm of new registrations named before it, or behind `batch` nodes whose daemons answer UNKNOWN for ever,
still gets its first check within the backlog (found in review: the checks took nodes()' order, by name, so such a
node was never checked while the storm or the UNKNOWN answers went on). A real lease table, the checks' clock moved
by hand."""

from __future__ import annotations

from nodecompat.server.inventory.first_check import FirstHealthChecks
from nodecompat.server.inventory.fleet_nodes import NodeInventory

VICTIM = "127.0.0.1:29999"


def test_a_node_named_after_an_endless_storm_of_new_registrations_is_checked() -> None:
    inv = NodeInventory()
    now = [0.0]
    checked: list[str] = []

    def check(addresses: list[str], timeout: float) -> None:
        checked.extend(addresses)
        for a in addresses:
            inv.record_contact(a, "UNAVAILABLE")

    first = FirstHealthChecks(inv, check, batch=5, burst_rate=0.0, new_rate=0.0, clock=lambda: now[0])
    inv.register("zz-victim", VICTIM, {}, 0.0)  # nobody answers there
    count = 0
    for _ in range(40):  # every round 10 new nodes named before it, twice what a round checks
        for _ in range(10):
            inv.register(f"a{count:05d}", f"127.0.0.1:{20000 + count}", {}, 0.0)
            count += 1
        now[0] += 0.5
        first.run_once()
        if VICTIM in checked:
            break
    assert VICTIM in checked  # before: never (the storm's nodes always came first)
    assert checked.index(VICTIM) < 11  # among the 11 nodes unchecked when the checks first ran (ties: by name)
    assert {v.node.address: v.health for v in inv.views()}[VICTIM] == "UNAVAILABLE"


def test_nodes_answering_unknown_for_ever_do_not_keep_the_others_from_their_check() -> None:
    inv = NodeInventory()
    now = [0.0]
    checked: list[str] = []
    unknown = {f"127.0.0.1:{21000 + i}" for i in range(8)}

    def check(addresses: list[str], timeout: float) -> None:
        checked.extend(addresses)
        for a in addresses:
            inv.record_contact(a, "UNKNOWN" if a in unknown else "UNAVAILABLE")

    first = FirstHealthChecks(inv, check, batch=4, burst_rate=0.0, new_rate=0.0, clock=lambda: now[0])
    for i, a in enumerate(sorted(unknown)):
        inv.register(f"a{i}", a, {}, 0.0)
    for _ in range(3):  # the UNKNOWN ones are checked again and again (they stay unchecked)
        now[0] += 0.5
        first.run_once()
    inv.register("zz-victim", VICTIM, {}, 0.0)
    for _ in range(3):
        now[0] += 0.5
        first.run_once()
    assert VICTIM in checked  # before: never (the 8 UNKNOWN nodes, named first, filled every batch of 4)
    assert {v.node.address: v.health for v in inv.views()}[VICTIM] == "UNAVAILABLE"
