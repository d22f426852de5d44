"""The proxy's modules import one way: no cycle, counting imports made inside functions
(a cycle dodged that way is still a cycle), and down the layers of decision 0048:
wire <- observe <- policy <- forward <- inbound | outbound <- dataplane, with agent
beside them. Imports under TYPE_CHECKING are types only and do not count for cycles or
layers; but even for types, nothing below the data plane names it (the sides get the
small Protocols of proxy.forward.plane), and inbound and outbound never name each other."""

from __future__ import annotations

import ast
from pathlib import Path

import gossamer.proxy

ROOT = Path(gossamer.proxy.__file__).parent


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(("gossamer.proxy", *parts)).removesuffix(".__init__")


def _imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.ImportFrom) and node.module:
        return [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    return []


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes inside `if TYPE_CHECKING:` blocks."""
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            ids |= {id(n) for n in ast.walk(node)}
    return ids


def import_graph(types_too: bool = False) -> dict[str, set[str]]:
    """Module -> the proxy modules it imports (`types_too`: also under TYPE_CHECKING)."""
    modules = {_module(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = set() if types_too else _type_checking_only(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            graph[name] |= {t for t in _imported(node) if t in modules and t != name}
    return graph


# The layers, lowest first; a module imports only from its own layer or lower ones.
LAYERS = {
    "wire": 0,
    "observe": 1,
    "agent": 1,
    "policy": 2,
    "forward": 3,
    "inbound": 4,
    "outbound": 4,
    "dataplane": 5,
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 else "proxy"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_the_proxy_imports_itself_back_even_from_inside_a_function() -> None:
    graph = import_graph()
    assert "gossamer.proxy.policy.call" in graph  # the walk reaches subpackages
    assert cycles(graph) == []


def test_every_module_of_the_proxy_has_a_layer() -> None:
    unplaced = [m for m in import_graph() if layer_of(m) not in LAYERS and m != "gossamer.proxy"]
    assert unplaced == []


def upward(graph: dict[str, set[str]]) -> list[str]:
    """The imports that go up a layer, or sideways into another package of the same one."""
    return sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        for t in targets
        if m != "gossamer.proxy"
        and t != "gossamer.proxy"
        and (
            LAYERS[layer_of(t)] > LAYERS[layer_of(m)]
            or (LAYERS[layer_of(t)] == LAYERS[layer_of(m)] and layer_of(t) != layer_of(m))
        )
    )


def test_the_layer_check_finds_an_import_up_or_across() -> None:
    wire, policy = "gossamer.proxy.wire.http1", "gossamer.proxy.policy.call"
    inbound, outbound = "gossamer.proxy.inbound.http", "gossamer.proxy.outbound.http"
    assert upward({policy: {wire}, wire: set()}) == []
    assert upward({wire: {policy}, policy: set()}) == [f"{wire} -> {policy}"]
    assert upward({inbound: {outbound}, outbound: set()}) == [f"{inbound} -> {outbound}"]


def test_imports_run_down_the_layers() -> None:
    assert upward(import_graph()) == []


def test_nothing_below_the_data_plane_names_it_and_the_directions_never_name_each_other() -> None:
    graph = import_graph(types_too=True)
    found = sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        for t in targets
        if (layer_of(t) == "dataplane" and layer_of(m) != "dataplane")
        or {layer_of(m), layer_of(t)} == {"inbound", "outbound"}
    )
    assert found == []
