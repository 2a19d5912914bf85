"""Tool calling and structured output from LangChain on parrotlet: `bind_tools` sends the tools
to the server, which guides a required call to valid JSON of a declared tool (guided decoding),
so even the 135M default model calls the calculator correctly; Python runs the tool and sends
its result back as a ToolMessage. `with_structured_output` is the same mechanism with a schema
as the tool. CPU, default model.
"""

from __future__ import annotations

import ast
import operator
from typing import Annotated

from langchain_core.messages import BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field

import parrotlet as P
from langchain_parrotlet import ChatParrotlet

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv}  # fmt: skip


# The argument's pattern is part of the tool's JSON Schema, so the guided call must match it.
Expression = Annotated[str, Field(pattern=r"^[0-9]+( ?[-+*/] ?[0-9]+)+$")]


@tool
def calculator(expression: Expression) -> str:
    """Evaluate an arithmetic expression of numbers and + - * /, e.g. 2 * 3."""

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"not arithmetic: {expression!r}")

    try:
        return f"{value(ast.parse(expression, mode='eval').body):g}"
    except (SyntaxError, ValueError, ZeroDivisionError):
        return "unknown"


class City(BaseModel):
    """A city and the country it is in."""

    city: str
    country: str


def answer_with_calculator(llm: ChatParrotlet, question: str) -> list[BaseMessage]:
    """One tool round: the model must call the calculator, Python runs it, the model answers."""
    messages: list[BaseMessage] = [HumanMessage(question)]
    call = llm.bind_tools([calculator], tool_choice="calculator").invoke(messages)
    messages.append(call)
    for tool_call in call.tool_calls:
        result = calculator.invoke(tool_call["args"])
        messages.append(ToolMessage(result, tool_call_id=tool_call["id"]))
    messages.append(llm.invoke(messages))
    return messages


def main(client: P.Client | None = None, max_tokens: int = 48) -> tuple[str, City]:
    """Print the tool round and a structured answer; return (the final answer, the City)."""
    owned = client is None
    client = client or P.Client.in_process()
    try:
        llm = ChatParrotlet(client=client, temperature=0, max_tokens=max_tokens)
        _, call, result, final = answer_with_calculator(llm, "What is 17 times 23?")
        print(f"tool call: {call.tool_calls[0]['name']}({call.tool_calls[0]['args']})")
        print(f"tool result: {result.content}")
        print(f"answer: {final.content}")
        city = llm.with_structured_output(City).invoke("Name the capital of Japan.")
        print(f"structured: {city!r}")
        return str(final.content), city
    finally:
        if owned:
            client.close()


if __name__ == "__main__":
    main()
