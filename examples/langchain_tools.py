"""Tool calling and structured output from LangChain on parrotlet: `bind_tools` sends the tools
to the server, which guides a required call to valid JSON of a declared tool (guided decoding),
so even the 135M default model calls `multiply` with integer arguments; Python runs the tool
and sends its result back as a ToolMessage. `with_structured_output` is the same mechanism
with a schema as the tool. CPU, default model.
"""

from __future__ import annotations

from langchain_core.messages import BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel

import parrotlet as P
from langchain_parrotlet import ChatParrotlet


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


class City(BaseModel):
    """A city and the country it is in."""

    city: str
    country: str


def answer_with_tool(llm: ChatParrotlet, question: str) -> list[BaseMessage]:
    """One tool round: the model must call `multiply`, Python runs it, the model answers."""
    messages: list[BaseMessage] = [HumanMessage(question)]
    call = llm.bind_tools([multiply], tool_choice="multiply").invoke(messages)
    messages.append(call)
    for tool_call in call.tool_calls:
        result = multiply.invoke(tool_call["args"])
        messages.append(ToolMessage(str(result), tool_call_id=tool_call["id"]))
    messages.append(llm.invoke(messages))
    return messages


def main(client: P.Client | None = None, max_tokens: int = 48) -> tuple[str, City]:
    """Print the tool round and a structured answer; return (the final answer, the City)."""
    owned = client is None
    client = client or P.Client.in_process()
    try:
        llm = ChatParrotlet(client=client, temperature=0, max_tokens=max_tokens)
        _, call, result, final = answer_with_tool(llm, "What is 17 times 23?")
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
