"""Tests of the retention policies in :mod:`lmcollapse.policies` on hand-made pools."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from lmcollapse.data.blocks import human_rows
from lmcollapse.errors import ConfigError
from lmcollapse.policies import MixContext, Policy, make_policy
from lmcollapse.policies.accumulate import Accumulate
from lmcollapse.policies.accumulate_subsample import AccumulateSubsample
from lmcollapse.policies.fresh import Fresh
from lmcollapse.policies.mix import Mix
from lmcollapse.policies.replace import Replace
from lmcollapse.registry import POLICIES, settings_of
from lmcollapse.settings import PolicySpec, build

N = 100
BLOCK = 4


def make_human(n: int = N) -> list[dict]:
    return human_rows(list(range(n * BLOCK)), BLOCK, "train")


def make_corpus(j: int, n: int = N) -> list[dict]:
    """What generation j wrote, shaped like :func:`lmcollapse.generate.generate_corpus` rows."""
    origin = f"gen_{j}"
    return [{"sample_id": f"{origin}:{i}", "origin": origin, "generation": j, "prompt_id": i,
             "input_ids": [10_000 * (j + 1) + i] * BLOCK} for i in range(n)]


def make_ctx(k: int, seed: int = 0, n: int = N, generations: int = 5) -> MixContext:
    corpora = {j: make_corpus(j, n) for j in range(k)}
    # a population's pool (the internet policy crawls it): human train, then each corpus
    pool = [{**r, "writer": "human", "batch": 0} for r in make_human(n)] + [
        {**r, "writer": "a", "batch": j + 1} for j in range(k) for r in corpora[j]]
    return MixContext(k=k, human=make_human(n), corpora=corpora,
                      rng=np.random.default_rng(seed), generations=generations, pool=pool)


def ids(rows: list[dict]) -> list[str]:
    return [r["sample_id"] for r in rows]


def origins(rows: list[dict]) -> Counter:
    return Counter(r["origin"] for r in rows)


def test_human_rows_fixture_shape() -> None:
    human = make_human()
    assert len(human) == N
    assert {r["origin"] for r in human} == {"human"}
    assert {r["generation"] for r in human} == {-1}
    assert len(set(ids(human))) == N
    assert human[3]["input_ids"] == [12, 13, 14, 15]


# ---------------------------------------------------------------- replace


@pytest.mark.parametrize("k", [1, 3])
def test_replace_is_exactly_previous_corpus(k: int) -> None:
    ctx = make_ctx(k)
    mix = Replace().build(ctx)
    assert mix == ctx.corpora[k - 1]
    assert origins(mix) == {f"gen_{k - 1}": N}
    mix.pop()  # the mix is a copy: changing it leaves the corpus alone
    assert len(ctx.corpora[k - 1]) == N


# ---------------------------------------------------------------- mix


@pytest.mark.parametrize(("k", "r"), [(1, 0.1), (3, 0.1), (2, 0.25), (2, 0.0), (2, 1.0)])
def test_mix_counts(k: int, r: float) -> None:
    ctx = make_ctx(k)
    mix = Mix.with_settings(fraction=r).build(ctx)
    n_human = round(r * N)
    assert len(mix) == N
    assert len(set(ids(mix))) == N  # no duplicates
    counts = origins(mix)
    assert counts["human"] == n_human
    assert counts[f"gen_{k - 1}"] == N - n_human
    assert set(counts) <= {"human", f"gen_{k - 1}"}
    human_ids = {r["sample_id"] for r in ctx.human}
    assert all(r["sample_id"] in human_ids for r in mix if r["origin"] == "human")


def test_mix_default_fraction_is_point_one() -> None:
    assert Mix().config.fraction == 0.1
    assert origins(Mix().build(make_ctx(1)))["human"] == 10


def test_mix_odd_pool_rounds() -> None:
    ctx = make_ctx(2, n=37)
    mix = Mix.with_settings(fraction=0.3).build(ctx)
    assert origins(mix) == {"human": round(0.3 * 37), "gen_1": 37 - round(0.3 * 37)}


def test_mix_human_draws_differ_across_generations_but_repeat_with_seed() -> None:
    def human_part(seed: int) -> list[str]:
        mix = Mix.with_settings(fraction=0.1).build(make_ctx(2, seed=seed))
        return [r["sample_id"] for r in mix if r["origin"] == "human"]

    assert human_part(1) != human_part(2)  # a new rng (another generation) draws anew
    assert human_part(1) == human_part(1)  # the same seed rebuilds the same mix
    mix = Mix.with_settings(fraction=0.1)
    assert mix.build(make_ctx(2, seed=5)) == mix.build(make_ctx(2, seed=5))


def test_mix_keeps_pool_order() -> None:
    mix = Mix.with_settings(fraction=0.2).build(make_ctx(1, seed=3))
    human_idx = [int(r["sample_id"].rsplit(":", 1)[1]) for r in mix if r["origin"] == "human"]
    gen_idx = [r["prompt_id"] for r in mix if r["origin"] == "gen_0"]
    assert human_idx == sorted(human_idx) and gen_idx == sorted(gen_idx)


# ---------------------------------------------------------------- accumulate


@pytest.mark.parametrize("k", [1, 2, 4])
def test_accumulate_is_human_plus_all_corpora(k: int) -> None:
    ctx = make_ctx(k)
    mix = Accumulate().build(ctx)
    assert len(mix) == N * (k + 1)
    assert origins(mix) == {"human": N, **{f"gen_{j}": N for j in range(k)}}
    assert len(set(ids(mix))) == len(mix)
    expected = ctx.human + [row for j in range(k) for row in ctx.corpora[j]]
    assert mix == expected


def test_accumulate_ignores_rng() -> None:
    assert Accumulate().build(make_ctx(3, seed=1)) == Accumulate().build(make_ctx(3, seed=9))


# ---------------------------------------------------------------- accumulate-subsample


@pytest.mark.parametrize("k", [1, 3])
def test_accumulate_subsample_fixed_budget(k: int) -> None:
    ctx = make_ctx(k, seed=11)
    pool_ids = set(ids(Accumulate().build(make_ctx(k))))
    mix = AccumulateSubsample().build(ctx)
    assert len(mix) == N
    assert len(set(ids(mix))) == N
    assert set(ids(mix)) <= pool_ids
    counts = origins(mix)
    # every origin is represented: each has expectation N/(k+1) >= 25 of a pool of N*(k+1)
    assert set(counts) == {"human", *(f"gen_{j}" for j in range(k))}
    # hypergeometric sd is < 5 for these sizes; 5 sd is a loose but real bound
    for origin, count in counts.items():
        assert abs(count - N / (k + 1)) < 25, (origin, count)


def test_accumulate_subsample_reproducible_and_seed_dependent() -> None:
    a = AccumulateSubsample().build(make_ctx(3, seed=4))
    assert a == AccumulateSubsample().build(make_ctx(3, seed=4))
    assert ids(a) != ids(AccumulateSubsample().build(make_ctx(3, seed=5)))


# ---------------------------------------------------------------- fresh


def test_fresh_shards_are_disjoint_and_rest_is_previous_corpus() -> None:
    generations, r = 5, 0.2
    policy = Fresh.with_settings(fraction=r, shard_seed=123)
    n_human = round(r * N)
    shards = []
    for k in range(1, generations + 1):
        # each generation has its own rng, as the loop derives it from (seed, policy, k)
        ctx = make_ctx(k, seed=1000 + k, generations=generations)
        mix = policy.build(ctx)
        assert len(mix) == N
        assert len(set(ids(mix))) == N
        assert origins(mix) == {"human": n_human, f"gen_{k - 1}": N - n_human}
        shards.append({row["sample_id"] for row in mix if row["origin"] == "human"})
    for a in range(generations):
        for b in range(a + 1, generations):
            assert not shards[a] & shards[b], (a + 1, b + 1)
    assert set().union(*shards) == set(ids(make_human()))  # 5 * 20 = N: every block once


def test_fresh_shard_depends_on_shard_seed_not_mix_rng() -> None:
    def shard(shard_seed: int, rng_seed: int) -> list[str]:
        policy = Fresh.with_settings(fraction=0.2, shard_seed=shard_seed)
        mix = policy.build(make_ctx(2, seed=rng_seed))
        return [row["sample_id"] for row in mix if row["origin"] == "human"]

    assert shard(7, 1) == shard(7, 2)
    assert shard(7, 1) != shard(8, 1)


def test_fresh_raises_when_pool_exhausted() -> None:
    policy = Fresh.with_settings(fraction=0.5, shard_seed=0)
    assert len(policy.build(make_ctx(2, generations=2))) == N
    with pytest.raises(ValueError, match="exhausted"):  # a generation past the configured ones
        policy.build(make_ctx(3, generations=2))


def spec(where: str = "policies[0]", **entry) -> PolicySpec:
    """A policy entry as the config layer builds it from YAML."""
    return build(PolicySpec, entry, where)


@pytest.mark.parametrize(("generations", "r", "ok"), [
    (5, 0.2, True), (2, 0.5, True), (3, 0.5, False), (5, 0.3, False), (5, None, True),
    (6, None, False),
])
def test_fresh_check(generations: int, r: float | None, ok: bool) -> None:
    s = spec(name="fresh", **({} if r is None else {"fraction": r}))
    if ok:
        Fresh.check(s.settings, "policies[0]", generations)
    else:
        with pytest.raises(ConfigError, match=r"policies\[0\]\.fraction.*generations"):
            Fresh.check(s.settings, "policies[0]", generations)


def test_fresh_every_generation_fits_when_check_passes() -> None:
    generations, r, n = 3, 0.3333333333, 1001
    Fresh.check(spec(name="fresh", fraction=r).settings, "policies[0]", generations)
    policy = Fresh.with_settings(fraction=r, shard_seed=0)
    for k in range(1, generations + 1):
        assert len(policy.build(make_ctx(k, n=n, generations=generations))) == n


# ---------------------------------------------------------------- check, registry, factory


@pytest.mark.parametrize("name", ["replace", "accumulate", "accumulate-subsample"])
def test_policies_without_a_fraction_refuse_one(name: str) -> None:
    spec("policies[2]", name=name)  # no fraction: fine
    with pytest.raises(ConfigError, match=r"policies\[2\]\.fraction: policy .* takes no "
                                          r"setting 'fraction'"):
        spec("policies[2]", name=name, fraction=0.1)


@pytest.mark.parametrize("fraction", [-0.01, 1.01])
def test_check_refuses_fraction_out_of_range(fraction: float) -> None:
    with pytest.raises(ConfigError, match=r"policies\[0\]\.fraction"):
        Mix.check(spec(name="mix", fraction=fraction).settings, "policies[0]", 5)


def test_registry_holds_the_design_policies() -> None:
    assert {"replace", "mix", "accumulate", "accumulate-subsample", "fresh"} <= set(
        POLICIES.names())
    assert POLICIES.names() == sorted(POLICIES.names())


@pytest.mark.parametrize("name", POLICIES.names())
def test_make_policy_for_each_registered_name(name: str) -> None:
    """Every policy, with its default settings (whatever they are), builds a mix of
    samples from the pools it is given."""
    cls = POLICIES.get(name)
    policy = make_policy(spec(name=name, label=f"{name}-x"), shard_seed=9)
    assert type(policy) is cls
    assert isinstance(policy, Policy)
    assert policy.config == settings_of(cls)()  # the defaults its settings class declares
    assert policy.shard_seed == 9
    mix = policy.build(make_ctx(1))
    assert mix and all("sample_id" in row and "input_ids" in row for row in mix)


def test_make_policy_uses_default_fraction() -> None:
    assert make_policy(spec(name="mix")).config.fraction == 0.1
    assert make_policy(spec(name="fresh")).config.fraction == 0.2
    assert not hasattr(make_policy(spec(name="replace")).config, "fraction")


def test_registry_did_you_mean() -> None:
    with pytest.raises(KeyError) as info:
        POLICIES.get("acumulate")
    msg = info.value.args[0]
    assert "unknown policy 'acumulate'" in msg
    assert "did you mean 'accumulate'" in msg
    assert "replace" in msg and "fresh" in msg
    with pytest.raises(KeyError) as info:
        make_policy(PolicySpec("zzz"))
    with pytest.raises(ConfigError, match="unknown policy 'zzz'"):
        spec(name="zzz")
    assert "did you mean" not in info.value.args[0]


def test_registry_refuses_duplicate_names() -> None:
    with pytest.raises(ValueError, match="twice"):
        POLICIES.register("replace")(Replace)


def test_fresh_from_the_source_takes_new_blocks_at_any_fraction() -> None:
    """``human_source: source``: round(r*N) blocks the source writes for this generation (any r up
    to 1, no disjointness limit), the rest drawn from corpus k-1."""
    asked = []

    def fresh_human(count: int) -> list[dict]:
        asked.append(count)
        return [{"sample_id": f"human:fresh:{i}", "origin": "human", "input_ids": [i]}
                for i in range(count)]

    for r in (0.0, 0.5, 1.0):
        policy = Fresh.with_settings(fraction=r, human_source="source")
        ctx = make_ctx(2, generations=5)
        ctx.fresh_human = fresh_human
        mix = policy.build(ctx)
        assert len(mix) == N and asked[-1] == round(r * N)
        assert origins(mix) == {k: v for k, v in {"human": round(r * N),
                                                  "gen_1": N - round(r * N)}.items() if v}
        assert not set(ids(mix)) & set(ids(ctx.human))  # never the training pool's blocks
    Fresh.check(spec(name="fresh", fraction=1.0, human_source="source").settings, "policies[0]", 5)
    with pytest.raises(ValueError, match="human_source: source needs a data source"):
        Fresh.with_settings(fraction=0.5, human_source="source").build(make_ctx(1))
