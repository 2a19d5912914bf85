"""An agent-style LangChain chain on parrotlet: the model picks a tool call, Python parses it and
runs the tool, and the tool's result goes into the next prompt. Parsing needs the text, so the
graph scope submits there (one submit per stage where Python reads text: two here), and every
step behaves exactly as in plain LangChain. CPU, default model.
"""

from __future__ import annotations

import ast
import operator
import re

from langchain_core.language_models import BaseLanguageModel
from langchain_core.output_parsers import BaseOutputParser, StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

import parrotlet as P
from langchain_parrotlet import ChatParrotlet, parrotlet_graph

ACT = (
    "You can use a calculator. To use it, reply with exactly one line:\n"
    "Action: calculator[<arithmetic expression>]\n\n"
    "Question: {question}"
)
ANSWER = "Fact: {expression} = {observation}.\nQuestion: {question}\nAnswer:"
_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_EXPRESSION = re.compile(r"\d+(?:\.\d+)?(?:\s*[-+*/x×]\s*\d+(?:\.\d+)?)+")


class ActionParser(BaseOutputParser[str]):
    """Reads the calculator's input from `Action: calculator[...]`, as ReAct agents do; falls
    back to the first arithmetic expression in the reply."""

    def parse(self, text: str) -> str:
        match = re.search(r"Action:\s*calculator\[(.*?)\]", text)
        found = _EXPRESSION.search(match.group(1) if match else text)
        return found.group(0).replace("×", "*").replace("x", "*") if found else ""


def calculator(expression: str) -> str:
    """The tool: + - * / over numbers, nothing else."""

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"not arithmetic: {expression!r}")

    try:
        result = value(ast.parse(expression, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError):
        return "unknown"
    return f"{result:g}"


def run_agent(llm: BaseLanguageModel, question: str) -> tuple[str, str, str]:
    """One tool step: (expression, tool result, final answer)."""
    act = ChatPromptTemplate.from_messages([("human", ACT)]) | llm | ActionParser()
    answer = ChatPromptTemplate.from_messages([("human", ANSWER)]) | llm | StrOutputParser()
    expression = act.invoke({"question": question})  # the parser reads the text: a submit
    observation = calculator(expression)  # Python runs the tool
    inputs = {"question": question, "expression": expression, "observation": observation}
    return expression, observation, answer.invoke(inputs)


def main(client: P.Client | None = None, max_tokens: int = 32) -> str:
    """Answer one arithmetic question with the calculator tool; print each step."""
    owned = client is None
    client = client or P.Client.in_process()
    try:
        llm = ChatParrotlet(client=client, temperature=0, max_tokens=max_tokens)
        submits = _submits(client)
        with parrotlet_graph(llm):
            expression, observation, answer = run_agent(llm, "What is 17 times 23?")
            answer = str(answer)
        print(f"tool call: calculator[{expression}] -> {observation}")
        print(f"answer: {answer}")
        if client.core is not None:
            print(f"(2 calls, {_submits(client) - submits} submissions)")
        return answer
    finally:
        if owned:
            client.close()


def _submits(client: P.Client) -> int:
    return client.core.stats().client_requests.get("submit", 0) if client.core else 0


if __name__ == "__main__":
    main()
