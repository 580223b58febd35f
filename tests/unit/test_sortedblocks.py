import random

from xgate.sortedblocks import BLOCK, Chain, SortedBlocks


def test_snapshots_follow_name_order_and_never_change_afterwards() -> None:
    rng = random.Random(7)
    ordered: SortedBlocks[str, str] = SortedBlocks()
    model: dict[str, str] = {}
    taken: list[tuple[Chain[str], tuple[str, ...]]] = []
    names = [f"route-{n:05d}" for n in range(12 * BLOCK)]
    # Growth (blocks split), then churn (replace, add, delete), then a drain (blocks empty and go).
    steps = [("set", name) for name in rng.sample(names, len(names))]
    steps += [(rng.choice(("set", "set", "delete")), rng.choice(names)) for _ in range(3000)]
    steps += [("delete", name) for name in rng.sample(names, len(names))]
    for step, (action, name) in enumerate(steps):
        if action == "set":
            ordered.set(name, f"{name}@{step}")
            model[name] = f"{name}@{step}"
        else:
            assert ordered.delete(name) == (model.pop(name, None) is not None)
        expected = tuple(model[key] for key in sorted(model))
        snapshot = ordered.snapshot()
        assert len(snapshot) == len(expected)
        assert tuple(snapshot) == expected
        if step % 97 == 0:
            taken.append((snapshot, expected))
    assert ordered.snapshot() == ()
    for snapshot, expected in taken:
        assert tuple(snapshot) == expected  # a later change copied its block instead of changing it


def test_a_chain_reads_like_a_tuple() -> None:
    chain = Chain((("a", "b"), ("c",)))
    assert len(chain) == 3
    assert chain[0] == "a" and chain[-1] == "c" and chain[1:] == ("b", "c")
    assert chain == ("a", "b", "c")
    assert ("a", "b", "c") == chain  # noqa: SIM300  # the tuple on the left: Python asks the Chain
    assert chain == Chain((("a",), ("b", "c"))) and hash(chain) == hash(("a", "b", "c"))
    assert chain != ("a", "b") and chain != ["a", "b", "c"]
    assert "b" in chain and list(reversed(chain)) == ["c", "b", "a"]
