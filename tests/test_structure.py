"""The shape of the package: no import cycles, imports at module level, and parts added
without touching the core (a metric, a data source and a policy defined right here, in
this one test module, run through the config layer, the loop and the report)."""

from __future__ import annotations

import ast
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import tiny_config

from lmcollapse import files
from lmcollapse.data.base import load_human_text
from lmcollapse.data.synthetic import SyntheticSettings, SyntheticSource
from lmcollapse.errors import ConfigError
from lmcollapse.layout import Generation
from lmcollapse.loop import CollapseLoop
from lmcollapse.metrics.base import MeasureContext, Measurement, Metric
from lmcollapse.plan import Step, lineage_steps
from lmcollapse.policies import MixContext, Policy, make_policy
from lmcollapse.policies.replace import Replace
from lmcollapse.registry import METRICS, POLICIES, SOURCES, UNIT_KINDS
from lmcollapse.report import compute, load
from lmcollapse.units import UnitKind

PACKAGE = Path(__file__).resolve().parents[1] / "lmcollapse"
#: third-party packages a function may import lazily: optional extras only
OPTIONAL = {"gguf", "submitit", "wandb"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, list[tuple[str, int, bool]]]:
    """``{module: [(imported lmcollapse module or third-party top name, line, at top)]}``."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    out: dict[str, list[tuple[str, int, bool]]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        top |= {id(n) for t in tree.body if isinstance(t, ast.Try) for n in t.body + [
            x for h in t.handlers for x in h.body]}
        found = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from lmcollapse.x import y` may name a module y of package x
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                           else node.module for a in node.names]
            else:
                continue
            found += [(t, node.lineno, id(node) in top) for t in targets]
        out[name] = found
    return out


def test_no_import_cycles_among_lmcollapse_modules():
    """Every ``import`` of an lmcollapse module, at module level or inside a function, is
    an edge; the graph has no cycle (checked by depth-first search)."""
    imports = _imports()
    graph = {m: sorted({t for t, _, _ in found if t in imports and t != m})
             for m, found in imports.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for nxt in graph[m]:
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert graph["lmcollapse.errors"] == []  # the leaf every part imports
    assert set(graph["lmcollapse.registry"]) <= {"lmcollapse.errors"}
    assert graph["lmcollapse.checks"] == ["lmcollapse.errors"]  # the parts' range checks
    # the config layer names no part: it reaches them through the registry
    config_layer = ["lmcollapse.config", "lmcollapse.cells"] + [
        m for m in graph if m.startswith("lmcollapse.settings")]
    assert not [(m, t) for m in config_layer for t in graph[m] if t.startswith(
        ("lmcollapse.metrics", "lmcollapse.policies", "lmcollapse.data", "lmcollapse.scorers"))]


def test_parts_never_import_the_config_loader():
    """A part checks its settings with lmcollapse.checks and may hold a core section's type
    (lmcollapse.settings), but never imports the loader or the cells: those find the parts
    through the registry at run time, and a part importing them would close that cycle."""
    imports = _imports()
    parts = [m for m in imports if m.startswith(("lmcollapse.metrics.", "lmcollapse.policies.",
                                                 "lmcollapse.data.", "lmcollapse.scorers.",
                                                 "lmcollapse.losses."))]
    assert len(parts) > 20
    loader = {"lmcollapse.config", "lmcollapse.cells", "lmcollapse.grid", "lmcollapse.loop",
              "lmcollapse.preflight"}
    offenders = [(m, t) for m in parts for t, _, _ in imports[m] if t in loader]
    assert not offenders, offenders


#: the phases of a report, in the one order its modules may import each other
REPORT_PHASES = {"stats": 0, "load": 1, "compute": 2, "documents": 2, "lineages": 2,
                 "populations": 2, "formats": 3, "plots": 3, "documents_formats": 3,
                 "lineages_formats": 3, "populations_formats": 3, "profile": 2,
                 "profile_formats": 3,
                 "write": 4, "compare": 4, "claims": 4, "results": 1, "leaderboard": 4,
                 "site": 4}


def test_the_report_goes_one_way_and_never_reaches_torch():
    """lmcollapse.report: load, then compute, then render, then write (a module imports
    only modules of its own or an earlier phase), and nothing it imports, directly or
    through other lmcollapse modules, imports torch or a library built on it."""
    imports = _imports()
    package = {m for m in imports if m.startswith("lmcollapse.report.")}
    assert {m.rsplit(".", 1)[1] for m in package} == set(REPORT_PHASES)
    for m in package:
        phase = REPORT_PHASES[m.rsplit(".", 1)[1]]
        later = [t for t, _, _ in imports[m] if t in package
                 and REPORT_PHASES[t.rsplit(".", 1)[1]] > phase]
        assert not later, f"{m} imports a later phase: {later}"
    reached, todo = set(), sorted(package)
    while todo:
        m = todo.pop()
        if m in reached:
            continue
        reached.add(m)
        todo += [t for t, _, _ in imports[m] if t in imports]
    heavy = {"torch", "transformers", "accelerate", "peft", "datasets", "mauve"}
    offenders = {m: t for m in reached for t, _, _ in imports[m] if t.split(".")[0] in heavy}
    assert not offenders, offenders


#: what the command line imports inside the commands that use it, so that `lmcollapse
#: report` and `lmcollapse --help` never load torch (tests/test_report.py runs the report
#: command and checks), and `run` never loads the report's statistics and plotting
CLI_LATE = {"tqdm.contrib.logging", "lmcollapse.loop", "lmcollapse.models",
            "lmcollapse.preflight", "lmcollapse.bench", "lmcollapse.parallel",
            "lmcollapse.smoke", "lmcollapse.report.write", "lmcollapse.report.compare",
            "lmcollapse.report.claims", "lmcollapse.report.leaderboard",
            "lmcollapse.publish.export", "lmcollapse.report.site",
            "lmcollapse.publish.dataset"}


def _calls(path: Path) -> set[str]:
    """Every name called in a module, as ``name`` or ``.attribute``."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            out.add(f.id if isinstance(f, ast.Name) else f".{f.attr}"
                    if isinstance(f, ast.Attribute) else "")
    return out


def test_weights_have_one_home_and_the_grid_one_owner():
    """The loop asks lmcollapse.weights which weights a generation starts from and where
    they go: it never saves, loads or merges a model itself, nor imports peft or the model
    loader. The grid's cells are built by lmcollapse.grid only (the config layer builds
    them once more to validate every grid point at load)."""
    imports = _imports()
    loop_imports = {t for t, _, _ in imports["lmcollapse.loop"]}
    assert not {"peft", "lmcollapse.models", "transformers", "shutil"} & loop_imports
    assert not {".save_pretrained", ".from_pretrained", ".merge_and_unload", "load_model",
                "random_model", "starting_model", "load_pretrained"} & _calls(
        PACKAGE / "loop.py")
    assert {"lmcollapse.weights", "lmcollapse.grid"} <= loop_imports
    builders = sorted(_module_name(p) for p in PACKAGE.rglob("*.py") if "cells" in _calls(p))
    assert builders == ["lmcollapse.config", "lmcollapse.grid"], builders
    loop_class = next(n for n in ast.parse((PACKAGE / "loop.py").read_text()).body
                      if isinstance(n, ast.ClassDef) and n.name == "CollapseLoop")
    assert loop_class.end_lineno - loop_class.lineno < 250


def test_imports_inside_functions_only_for_optional_extras():
    late = [(m, t, line) for m, found in _imports().items() for t, line, top in found
            if not top and t.split(".")[0] not in OPTIONAL]
    assert [x for x in late if x[0] != "lmcollapse.cli"] == []
    assert {t for m, t, _ in late if m == "lmcollapse.cli"} == CLI_LATE


# --- a new metric, source and policy, each defined in this one module -----------------------


@dataclass
class LengthSettings:
    scale: float = 1.0

    def check(self, where: str) -> None:
        if self.scale <= 0:
            raise ConfigError(f"{where}.scale: must be > 0, got {self.scale}")


class MeanLength(Metric):
    """Mean sample length in tokens, times ``scale`` (human row: the chunk length)."""

    settings = LengthSettings
    display_name = "Mean length"
    higher_is_better = None
    columns = ("mean_length",)

    def compute(self, ctx: MeasureContext) -> Measurement:
        seqs = ctx.corpus_seqs()
        return Measurement({"mean_length": self.config.scale * sum(map(len, seqs)) / len(seqs)},
                           sizes={"samples": len(seqs)})

    def human_reference(self, ctx: MeasureContext) -> Measurement:
        return Measurement({"mean_length": self.config.scale * ctx.sample_tokens})

    def describe(self, m: Measurement) -> str:
        return f"scale {self.config.scale}"


@dataclass
class ShortSettings(SyntheticSettings):
    words_per_doc: int = 3


class ShortDocs(SyntheticSource):
    """The synthetic source with every document cut to its first ``words_per_doc`` words."""

    settings = ShortSettings

    def load(self) -> dict[str, list[str]]:
        n = self.config.words_per_doc
        return {k: [" ".join(d.split()[:n]) for d in v] for k, v in super().load().items()}


@dataclass
class TakeSettings:
    human_share: float = 0.5


class TakeHuman(Policy):
    """round(human_share * N) human blocks, then corpus k-1 for the rest."""

    settings = TakeSettings

    def build(self, ctx: MixContext) -> list:
        n = round(self.config.human_share * ctx.n)
        return ctx.human[:n] + ctx.previous()[: ctx.n - n]


@pytest.fixture()
def parts(monkeypatch):
    for registry, name, part in ((METRICS, "mean_length", MeanLength),
                                 (SOURCES, "short", ShortDocs),
                                 (POLICIES, "take_human", TakeHuman)):
        monkeypatch.setattr(part, "name", name)
        monkeypatch.setitem(registry._entries, name, part)


@pytest.mark.slow
def test_a_new_policy_source_and_metric_need_no_core_edit(parts, tmp_path):
    cfg = tiny_config(tmp_path, "generations=1", "data.source=short",
                      "data.short.words_per_doc=40", "data.short.train_docs=120",
                      "data.short.test_docs=20", "data.short.vocab_size=60",
                      "data.short.branching=6",
                      "policies=[{name: take_human, human_share: 0.25}]",
                      "metrics.names=[perplexity,mean_length]", "metrics.mean_length.scale=2")
    assert cfg.policies[0].human_share == 0.25 and cfg.metrics.mean_length.scale == 2
    mix = make_policy(cfg.policies[0]).build(MixContext(
        1, [{"i": i} for i in range(8)], {0: [{"j": j} for j in range(8)]}, None, 1))
    assert mix == [{"i": 0}, {"i": 1}] + [{"j": j} for j in range(6)]
    assert all(len(d.split()) <= 40 for d in load_human_text(cfg.data)["train"])
    # their settings are checked where they are declared, named by their config key
    for bad, where in (("metrics.mean_length.scale=0", "metrics.mean_length.scale"),
                       ("data.short.vocab_size=1", "data.short"),
                       ("policies=[{name: take_human, share: 1}]", "policies[0].share")):
        with pytest.raises(ConfigError, match=where.replace(".", r"\.").replace("[", r"\[")):
            tiny_config(tmp_path, "data.source=short", "metrics.names=[mean_length]", bad)
    CollapseLoop(cfg).run()
    seed = cfg.run_dir / "seed_0"
    human = json.loads((seed / "human" / "metrics.json").read_text())
    gen1 = json.loads((seed / "take_human" / "gen_01" / "metrics.json").read_text())
    assert human["values"]["mean_length"] == 2 * cfg.generate.new_tokens
    assert gen1["values"]["mean_length"] == 2 * cfg.generate.new_tokens
    assert gen1["meta"]["mean_length"]["display_name"] == "Mean length"
    assert gen1["conditions"]["mean_length"] == "scale 2.0"
    lb = compute.leaderboard(load.load_runs([cfg.run_dir]))
    assert lb.columns == ["perplexity", "mean_length"]  # columns the metrics declared



def _named_strings(path: Path, names: set[str]) -> list[tuple[int, str]]:
    """String constants of a module equal to one of ``names`` (a codec's ``errors="replace"``,
    the arguments of ``encode``/``decode``, a derived seed's purpose, ``derive_seed(...,
    "mix")``, and the text of an f-string are not names of parts)."""
    tree = ast.parse(path.read_text())
    codec = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):  # a piece of an f-string builds another name
            codec |= {id(v) for v in node.values}
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute) and node.func.attr in ("encode", "decode"):
                codec |= {id(a) for a in node.args}
            codec |= {id(k.value) for k in node.keywords if k.arg == "errors"}
            if isinstance(node.func, ast.Name) and node.func.id == "derive_seed":
                codec |= {id(a) for a in node.args}
    return [(n.lineno, n.value) for n in ast.walk(tree) if isinstance(n, ast.Constant)
            and n.value in names and id(n) not in codec]


def test_only_the_policies_and_the_unit_kinds_name_a_policy():
    """docs/design.md: the config layer, the loop and the report never name a part. No
    module outside lmcollapse/policies/ and the unit kinds (lmcollapse/units/) holds a
    registered policy's name as a string: a new policy is one module plus its test."""
    POLICIES.names()  # discovers every built-in part
    names = set(POLICIES.names())
    assert {"replace", "internet"} <= names
    allowed = set((PACKAGE / "units").rglob("*.py")) | set((PACKAGE / "policies").rglob("*.py"))
    offenders = {str(p.relative_to(PACKAGE)): found for p in sorted(PACKAGE.rglob("*.py"))
                 if p not in allowed and (found := _named_strings(p, names))}
    assert not offenders, offenders


def test_the_loop_the_plan_and_the_config_layer_name_no_unit_kind():
    """A policy declares its unit kind; the loop, the plan, the grid, the set-up, the
    rehearsal and the config layer ask the registry by that name, and hold neither a unit
    kind's name nor a test for a kind's settings (``hasattr(settings, "participants")``)."""
    kinds = set(UNIT_KINDS.names())
    assert {"lineage", "population"} <= kinds
    assert POLICIES.get("internet").unit == "population"
    modules = [PACKAGE / f for f in ("loop.py", "plan.py", "grid.py", "cells.py", "config.py",
                                     "checks.py", "preflight.py", "smoke.py", "disk.py",
                                     "parallel.py", "cli.py")]
    modules += sorted((PACKAGE / "settings").glob("*.py"))
    offenders = {str(p.relative_to(PACKAGE)): found for p in modules
                 if (found := _named_strings(p, kinds))}
    assert not offenders, offenders
    probes = [p.relative_to(PACKAGE) for p in modules if "participants\")" in p.read_text()]
    assert not probes, probes


class Twins(UnitKind):
    """A unit kind written here, as a researcher would add one: two lineages of one policy
    (participants ``<key>.a`` and ``<key>.b``, each with seeds of its own) and a step of its
    own after each generation, writing how many samples their corpora k share."""

    @classmethod
    def participants(cls, cell, data, i, suffix, where):
        return [dataclasses.replace(cell, key=f"{cell.key}.{x}", kind=UNIT_KINDS.default(),
                                    participants=[], unit=cell.key) for x in "ab"]

    @classmethod
    def steps(cls, grid, seed, cell, k):
        out = [s for p in cell.participants for s in lineage_steps(grid, seed, p, k, cell.key)]
        return out + [Step(seed, "measure", cls.name, Generation(seed, k, cell.key), cell.key)]

    def take(self, step, cell, d):
        def audit():
            gens = [Generation(step.seed, step.gen.k, p.key, p.founder)
                    for p in cell.participants]
            a, b = ({tuple(r["input_ids"]) for r in self.host.corpus(self.host.layout.gen_dir(
                g if g.k else self.host.grid.generation0(g)))} for g in gens)
            files.write_json(d / "twins.json", {"shared": len(a & b), "samples": len(a)})

        self.host.run_step(d, step.kind, step.where, audit)


class TwinReplace(Replace):
    """``replace``, run as a pair of twins."""

    unit = "twins"


@pytest.mark.slow
def test_a_new_unit_kind_is_one_module(monkeypatch, tmp_path):
    """A kind registered outside the package (here, in this test) runs through the config
    layer, the plan, the loop and its set-up with no core edit: its participants train,
    and its own step runs after them, once per generation."""
    monkeypatch.setattr(Twins, "name", "twins")
    monkeypatch.setitem(UNIT_KINDS._entries, "twins", Twins)
    monkeypatch.setattr(TwinReplace, "name", "twin_replace")
    monkeypatch.setitem(POLICIES._entries, "twin_replace", TwinReplace)
    cfg = tiny_config(tmp_path, "generations=1", "metrics.names=[perplexity]",
                      "policies=[{name: twin_replace, label: pair}]")
    loop = CollapseLoop(cfg)
    assert [m.key for m in loop.grid.cells["pair"].participants] == ["pair.a", "pair.b"]
    assert [(s.unit, s.kind, s.gen.k) for s in loop.plan if s.target == "twins"] == [
        ("pair", "measure", 0), ("pair", "measure", 1)]
    loop.run()
    seed = cfg.run_dir / "seed_0"
    zero, one = (files.read_json(seed / "pair" / f"gen_0{k}" / "twins.json") for k in (0, 1))
    assert zero["shared"] == zero["samples"] > 0  # both see the seed's shared corpus 0
    assert one["shared"] < one["samples"]  # each wrote its own corpus 1
    for twin in ("pair.a", "pair.b"):
        assert "perplexity" in files.read_json(seed / twin / "gen_01" / "metrics.json")["values"]
