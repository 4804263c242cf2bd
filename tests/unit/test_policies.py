"""Eviction policies (fluidcache.tiering.policy): one shared kit, plus each policy's order.

`PolicyTests` is the contract every policy keeps; a policy plugs in by subclassing it with
a `policy_cls` fixture (the pattern of zarr's `StoreTests`). A new policy gets the whole
kit by adding one small class at the bottom.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidcache.tiering.policy import LFU, LRU, POLICIES, FillOnce, Policy, make


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class PolicyTests:
    """The four hooks: admit(key, full), access(key) (insert is the first access),
    remove(key), victims() (a live view in eviction order: list it, then remove)."""

    admits_when_full: bool   # set by each subclass

    @pytest.fixture
    def policy_cls(self) -> type[Policy]:
        raise NotImplementedError

    @pytest.fixture
    def policy(self, policy_cls) -> Policy:
        return policy_cls(FakeClock())

    def test_admits_when_not_full(self, policy):
        assert policy.admit("k", full=False) is True

    def test_admit_when_full(self, policy):
        assert policy.admit("k", full=True) is self.admits_when_full

    def test_no_victims_at_start(self, policy):
        assert list(policy.victims()) == []

    def test_inserted_keys_are_each_a_candidate_once(self, policy):
        for k in "abc":
            policy.insert(k)
        for k in "cab":
            policy.access(k)
            policy.access(k)
        assert sorted(policy.victims()) == ["a", "b", "c"]

    def test_remove(self, policy):
        for k in "abc":
            policy.insert(k)
        policy.remove("b")
        policy.remove("b")          # twice: no error
        policy.remove("ghost")      # unknown: no error
        assert sorted(policy.victims()) == ["a", "c"]
        policy.insert("b")          # back again after removal
        assert sorted(policy.victims()) == ["a", "b", "c"]

    def test_victims_listed_then_removed(self, policy):
        for k in "abcd":
            policy.insert(k)
        chosen = list(policy.victims())[:2]   # a live view: finish iterating, then remove
        for v in chosen:
            policy.remove(v)
        assert sorted(chosen + list(policy.victims())) == list("abcd")
        assert not set(chosen) & set(policy.victims())

    def test_victims_is_lazy_and_repeatable(self, policy):
        for k in "abc":
            policy.insert(k)
        assert list(policy.victims()) == list(policy.victims())
        assert next(iter(policy.victims())) == list(policy.victims())[0]

    def test_single_key_is_the_victim(self, policy):
        policy.insert("only")
        policy.access("only")
        assert list(policy.victims()) == ["only"]

    def test_a_cooled_key_goes_first_until_it_is_read_again(self, policy):
        for k in "abcd":
            policy.insert(k)
            policy.access(k)
        policy.cool("c")
        policy.cool("b")                    # the last cooled goes first
        assert list(policy.victims())[:2] == ["b", "c"]
        policy.cool("ghost")                # unknown: ignored
        assert sorted(policy.victims()) == list("abcd")
        policy.access("b")                  # read again: no longer first
        assert list(policy.victims())[0] == "c"

    def test_make_by_name(self, policy_cls):
        clock = FakeClock()
        p = make(policy_cls.name, clock)
        assert type(p) is policy_cls and p.clock is clock
        assert POLICIES[policy_cls.name] is policy_cls

    def test_candidates_are_exactly_the_present_keys(self, policy_cls):
        # An inner @given: hypothesis wants one function per policy, not one shared method.
        @settings(max_examples=50, deadline=None)
        @given(ops=st.lists(st.tuples(st.sampled_from(["insert", "access", "remove",
                                                       "cool"]),
                                      st.sampled_from("abcdef")), max_size=40))
        def check(ops):
            policy, present = policy_cls(), set()
            for op, k in ops:
                if op == "insert" and k not in present:
                    policy.insert(k)
                    present.add(k)
                elif op == "access" and k in present:
                    policy.access(k)
                elif op == "remove":
                    policy.remove(k)
                    present.discard(k)
                elif op == "cool":
                    policy.cool(k)                 # unknown keys: ignored
                    if k in present:
                        assert next(iter(policy.victims())) == k
            victims = list(policy.victims())
            assert len(victims) == len(set(victims))
            assert set(victims) == present

        check()


class TestLRU(PolicyTests):
    admits_when_full = True

    @pytest.fixture
    def policy_cls(self):
        return LRU

    def test_least_recently_used_goes_first(self, policy):
        for k in "abcd":
            policy.insert(k)
        assert list(policy.victims()) == list("abcd")
        policy.access("a")
        policy.access("c")
        assert list(policy.victims()) == list("bdac")


class TestLFU(PolicyTests):
    admits_when_full = True

    @pytest.fixture
    def policy_cls(self):
        return LFU

    def test_fewer_hits_go_first(self, policy):
        for k, extra_hits in (("hot", 5), ("cold", 0), ("warm", 2)):
            policy.insert(k)
            for _ in range(extra_hits):
                policy.access(k)
        assert list(policy.victims()) == ["cold", "warm", "hot"]

    def test_ties_go_to_the_least_recently_used(self):
        clock = FakeClock()
        policy = LFU(clock)
        for t, k in enumerate("abc"):
            clock.now = t
            policy.insert(k)
        clock.now = 10
        policy.access("a")
        clock.now = 11
        policy.access("b")      # a and b have 2 hits, b more recent; c has 1
        assert list(policy.victims()) == ["c", "a", "b"]

    def test_removal_forgets_the_hits(self, policy):
        policy.insert("a")
        for _ in range(5):
            policy.access("a")
        policy.insert("b")
        policy.access("b")
        policy.remove("a")
        policy.insert("a")      # back with one hit: now colder than b
        assert list(policy.victims()) == ["a", "b"]

    def test_default_clock_orders_ties_by_recency(self):
        policy = LFU()
        for k in "xyz":
            policy.insert(k)
        assert list(policy.victims()) == list("xyz")


class TestFillOnce(PolicyTests):
    admits_when_full = False

    @pytest.fixture
    def policy_cls(self):
        return FillOnce

    def test_refuses_admission_only_when_full(self, policy):
        assert policy.admit("new", full=False) and not policy.admit("new", full=True)

    def test_explicit_removals_still_order_like_lru(self, policy):
        for k in "abc":
            policy.insert(k)
        policy.access("a")
        assert list(policy.victims()) == list("bca")


def test_make_unknown_policy():
    with pytest.raises(ValueError, match="unknown eviction policy"):
        make("mru")
