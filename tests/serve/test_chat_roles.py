"""Multi-message chat calls (Role segments) on the real default model: the assembled prompt is
exactly the chat template's tokenization, and the call generates what `/v1/chat/completions`
generates for the same messages."""

from __future__ import annotations

import httpx
import pytest

from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.engine.tokenizer import format_chat
from parrotlet.graph.ir import Call, Graph, Input, Output, Role, Text, Variable
from parrotlet.serve.core import ServeCore

pytestmark = pytest.mark.slow

SYSTEM = {"role": "system", "content": "You are a terse geography tutor."}
USER = {"role": "user", "content": "What is the capital of Italy?"}
HISTORY = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Name a primary color."},
    {"role": "assistant", "content": "Red."},
    {"role": "user", "content": "Name another one."},
]


def role_call(messages: list[dict[str, str]], sampling: SamplingParams) -> Call:
    segments = [s for m in messages for s in (Role(m["role"]), Text(m["content"]))]
    return Call("c", (*segments, Output("a", sampling)))


@pytest.mark.parametrize("messages", [[SYSTEM, USER], [USER], HISTORY])
def test_assembled_ids_equal_the_chat_template(default_core: ServeCore, messages) -> None:
    core = default_core
    asm = core.assembler
    ids = asm.prefix_ids(role_call(messages, SamplingParams()), lambda s: asm.encode(s.text))
    assert ids == format_chat(core.tokenizer, messages)


def test_a_call_without_roles_is_one_user_message(default_core: ServeCore) -> None:
    core = default_core
    asm = core.assembler
    call = Call("c", (Text("What is"), Input("x"), Output("a")))
    values = {"x": asm.encode(" the capital of Italy?")}  # split at a pre-token boundary
    ids = asm.prefix_ids(
        call, lambda s: asm.encode(s.text) if isinstance(s, Text) else values[s.var]
    )
    assert ids == format_chat(core.tokenizer, [USER])  # SmolLM2 adds its default system prompt


@pytest.mark.anyio
async def test_role_call_generates_what_chat_completions_generates(
    core: ServeCore, client_a: httpx.AsyncClient
) -> None:
    body = {"messages": [SYSTEM, USER], "max_tokens": 12, "temperature": 0}
    response = (await client_a.post("/v1/chat/completions", json=body)).json()
    question = Variable("q", USER["content"])
    call = Call(
        "c",
        (
            Role("system"),
            Text(SYSTEM["content"]),
            Role("user"),
            Input("q"),
            Output("a", SamplingParams(temperature=0.0, max_tokens=12)),
        ),
    )
    sid = await core.create_session("roles")
    await core.submit("roles", sid, Graph((question,), (call,)))
    info = await core.get_variable("roles", sid, "a")
    assert info.value == response["choices"][0]["message"]["content"]
    assert info.value == "The capital of Italy is Rome."
    assert info.prompt_tokens == response["usage"]["prompt_tokens"]
