"""GraphIndex: a session's graph so far, and the validation of each new increment against it.

ServeCore keeps one per session. `add` checks an increment (unique ids, one producer per variable,
every reference resolvable, acyclic, size limits) and commits it only if all of it is valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from parrotlet.graph.ir import CHAT_ROLES, Call, Graph, GraphError, Output, Role, Text, Transform
from parrotlet.graph.transforms import check_transform_args

Node = Call | Transform
CLIENT = "<client>"  # producer of a variable whose value the client sets


@dataclass
class GraphIndex:
    """Nodes (calls and transforms) and variables of one session.

    Invariants: every variable has at most one producer — a node id, CLIENT once the client gave
    its value, or "" while it is declared and not yet produced; every node input names a known
    variable; the nodes form a DAG.
    """

    max_nodes: int = 4096
    max_value_chars: int = 1_000_000
    nodes: dict[str, Node] = field(default_factory=dict)
    producers: dict[str, str] = field(default_factory=dict)  # variable -> node id / CLIENT / ""
    consumers: dict[str, list[str]] = field(default_factory=dict)  # variable -> node ids

    def add(self, graph: Graph) -> None:
        """Validate `graph` against what is known and commit it; GraphError leaves no trace."""
        new_nodes: list[Node] = [*graph.calls, *graph.transforms]
        if len(self.nodes) + len(new_nodes) > self.max_nodes:
            raise GraphError(
                f"graph too large: {len(self.nodes) + len(new_nodes)} calls and transforms, "
                f"the limit is {self.max_nodes}"
            )
        self.check_text_sizes(graph)
        producers = dict(self.producers)
        self._declare_variables(graph, producers)
        self._check_nodes(new_nodes, producers)
        self._check_acyclic(new_nodes, producers)
        self.producers = producers
        for node in new_nodes:
            self.nodes[node.id] = node
            for var in _inputs(node):
                self.consumers.setdefault(var, []).append(node.id)

    def check_text_sizes(self, graph: Graph) -> None:
        """GraphError where a variable's value or a call's text has more than `max_value_chars`
        characters (ServeCore checks this before tokenizing the texts)."""
        texts = [(f"variable {v.name!r}", v.value) for v in graph.variables if v.value is not None]
        for call in graph.calls:
            texts.extend(
                (f"call {call.id!r}: segment {i}", segment.text)
                for i, segment in enumerate(call.segments)
                if isinstance(segment, Text)
            )
        for what, text in texts:
            if len(text) > self.max_value_chars:
                limit = self.max_value_chars
                raise GraphError(f"{what} has {len(text)} chars, the limit is {limit}")

    def claim_for_client(self, var: str) -> None:
        """Record that the client sets `var`; GraphError if a call produces it or it is set."""
        owner = self.producers.get(var)
        if owner is None:
            raise KeyError(var)
        if owner:
            what = "is already set" if owner == CLIENT else f"is produced by {owner!r}"
            raise GraphError(f"variable {var!r} {what}; it cannot be set by the client")
        self.producers[var] = CLIENT

    def _declare_variables(self, graph: Graph, producers: dict[str, str]) -> None:
        for var in graph.variables:
            if var.name in producers:
                raise GraphError(f"variable {var.name!r} is already declared in this session")
            producers[var.name] = CLIENT if var.value is not None else ""

    def _check_nodes(self, nodes: list[Node], producers: dict[str, str]) -> None:
        seen: set[str] = set()
        for node in nodes:
            kind = "call" if isinstance(node, Call) else "transform"
            if node.id in self.nodes or node.id in seen:
                raise GraphError(f"{kind} id {node.id!r} is used twice")
            seen.add(node.id)
            if isinstance(node, Call):
                check_call(node)
            else:
                check_transform_args(node)
            for var in _outputs(node):
                owner = producers.get(var)
                if owner:
                    raise GraphError(
                        f"variable {var!r} has two producers: {owner!r} and {node.id!r}"
                    )
                producers[var] = node.id
        for node in nodes:
            for var in _inputs(node):
                if var not in producers:
                    raise GraphError(f"{node.id!r} references unknown variable {var!r}")

    def _check_acyclic(self, new_nodes: list[Node], producers: dict[str, str]) -> None:
        """Depth-first search over new nodes (old ones were acyclic and cannot reach new ones
        except through variables produced by new nodes, which the producer map covers)."""
        nodes = {**self.nodes, **{n.id: n for n in new_nodes}}
        state: dict[str, int] = {}  # 1 = on the stack, 2 = done
        for start in new_nodes:
            if state.get(start.id) == 2:
                continue
            state[start.id] = 1
            stack = [(start.id, iter(_inputs(start)))]
            while stack:
                node_id, it = stack[-1]
                var = next(it, None)
                if var is None:
                    state[node_id] = 2
                    stack.pop()
                    continue
                parent = producers.get(var, "")
                if parent in ("", CLIENT) or state.get(parent) == 2:
                    continue
                if state.get(parent) == 1:
                    raise GraphError(f"cycle: {parent!r} depends on its own output via {var!r}")
                state[parent] = 1
                stack.append((parent, iter(_inputs(nodes[parent]))))


def check_call(call: Call) -> None:
    """GraphError where `call` alone is malformed (outputs, roles), whatever the graph around it."""
    if not call.outputs:
        raise GraphError(f"call {call.id!r} has no output")
    if len(set(call.outputs)) != len(call.outputs):
        raise GraphError(f"call {call.id!r} names an output twice")
    if set(call.inputs) & set(call.outputs):
        raise GraphError(f"call {call.id!r} reads a variable it produces")
    _check_roles(call)


def _check_roles(call: Call) -> None:
    """Role segments: chat calls only, first segment, before the first Output, known names,
    each followed by content."""
    roles = [i for i, s in enumerate(call.segments) if isinstance(s, Role)]
    if not roles:
        return
    if not call.chat:
        raise GraphError(f"call {call.id!r} has role segments but is not a chat call")
    if roles[0] != 0:
        raise GraphError(f"call {call.id!r}: with role segments, the first segment must be a role")
    first_output = next(i for i, s in enumerate(call.segments) if isinstance(s, Output))
    for i in roles:
        role = call.segments[i].role  # type: ignore[union-attr]
        if role not in CHAT_ROLES:
            raise GraphError(f"call {call.id!r}: role {role!r} is not one of {list(CHAT_ROLES)}")
        if i > first_output:
            raise GraphError(f"call {call.id!r}: a role segment follows the first output")
        if i + 1 == first_output or i + 1 in roles:
            raise GraphError(f"call {call.id!r}: the {role!r} message at segment {i} is empty")


def _inputs(node: Node) -> tuple[str, ...]:
    return node.inputs


def _outputs(node: Node) -> tuple[str, ...]:
    return node.outputs if isinstance(node, Call) else (node.output,)
