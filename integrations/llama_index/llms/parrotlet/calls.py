"""Graph building for the LlamaIndex adapter (request path step 1): a LlamaIndex prompt becomes
one chat Call in a parrotlet session; template fields that are Semantic Variables become a
server-side `format` transform, so dependent calls need no client round trip.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import parrotlet
from parrotlet.api import SemanticVariable, Session
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.graph import ir

if TYPE_CHECKING:
    from llama_index.core.llms import LLM
    from llama_index.core.prompts import BasePromptTemplate

Prompt = str | SemanticVariable
_MARK = "\x00parrotlet-field-{}\x00"


def add_call(
    session: Session, name: str, prompt: Prompt, sampling: SamplingParams
) -> SemanticVariable:
    """Add `Call(chat=True)` `[prompt, Output]` to `session` and return its output variable.

    The prompt (constant text, or a variable holding the text) is sent as one user message
    through the model's chat template, exactly like `Parrotlet.complete(prompt)`.
    """
    call_id = session.new_id(name)
    output = f"{call_id}.text"
    first = ir.Text(prompt) if isinstance(prompt, str) else ir.Input(prompt.name)
    session.add_call(ir.Call(call_id, (first, ir.Output(output, sampling)), chat=True))
    return SemanticVariable(session, output)


def prompt_of(llm: LLM, template: BasePromptTemplate, fields: Mapping[str, Any]) -> Prompt:
    """The prompt text `llm.predict(template, **fields)` sends (system prompt, query wrapper and
    `completion_to_prompt` included). With SemanticVariable fields, a variable whose value the
    server formats as that same text once the fields are set.

    Fields must appear in the template as plain `{name}` (no conversion or format spec).
    """
    variables = {k: v for k, v in fields.items() if isinstance(v, SemanticVariable)}
    marks = {name: _MARK.format(i) for i, name in enumerate(variables)}
    text = llm._get_prompt(template, **{**fields, **marks})
    if not variables:
        return text
    pattern = text.replace("{", "{{").replace("}", "}}")
    for i, mark in enumerate(marks.values()):
        pattern = pattern.replace(mark, "{" + str(i) + "}")
    return parrotlet.format(pattern, *variables.values())
