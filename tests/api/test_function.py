"""@semantic_function: template parsing, decoration-time checks, and the Calls it builds."""

from __future__ import annotations

import pytest

import parrotlet as P
from parrotlet.api.function import parse_template
from parrotlet.api.session import Session
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.graph.ir import Input, Output, Text

GREEDY_8 = {
    "temperature": 0,
    "top_p": 1.0,
    "top_k": -1,
    "seed": None,
    "max_tokens": 8,
    "stop": [],
    "stop_token_ids": [],
    "ignore_eos": False,
    "include_stop_str_in_output": False,
}


def make_step() -> P.SemanticFunction:
    @P.semantic_function(temperature=0, max_tokens=8)
    def step(text: str, out: str) -> None:
        """Continue: {{input:text}} {{output:out}}"""

    return step


def test_parse_template_exact_segments() -> None:
    segments = parse_template("Q: {{input:q}}\nA:{{ output : a }} done")
    assert segments == (
        Text("Q: "),
        Input("q"),
        Text("\nA:"),
        Output("a"),
        Text(" done"),
    )


def test_parse_template_rejects_unknown_placeholder() -> None:
    with pytest.raises(ValueError, match=r"placeholder '\{\{inpt:q\}\}' must be"):
        parse_template("Q: {{inpt:q}}")


def test_docstring_is_normalized_with_cleandoc() -> None:
    @P.semantic_function
    def answer(question, reply=P.Output(max_tokens=5, stop="\n")):
        """
        You are terse.
          Question: {{input:question}}
        Answer: {{output:reply}}
        """

    assert answer.name == "answer"
    assert answer.inputs == ("question",)
    assert answer.outputs == ("reply",)
    assert answer.template == (
        Text("You are terse.\n  Question: "),
        Input("question"),
        Text("\nAnswer: "),
        Output("reply", SamplingParams(max_tokens=5, stop=("\n",))),
    )


def test_output_sampling_overrides_function_defaults_field_by_field() -> None:
    @P.semantic_function(temperature=0, max_tokens=8, seed=7)
    def two(x, a=P.Output(max_tokens=3), b=P.Output(temperature=0.5, top_k=4)):
        """{{input:x}} {{output:a}} {{output:b}}"""

    outputs = [s for s in two.template if isinstance(s, Output)]
    assert outputs == [
        Output("a", SamplingParams(temperature=0, max_tokens=3, seed=7)),
        Output("b", SamplingParams(temperature=0.5, top_k=4, max_tokens=8, seed=7)),
    ]


def test_penalties_logit_bias_and_logprobs_reach_each_outputs_sampling() -> None:
    @P.semantic_function(temperature=0, max_tokens=8, repetition_penalty=1.3, logprobs=2)
    def judge(x, verdict=P.Output(logit_bias={5: -100, 9: 2.5}, presence_penalty=0.5)):
        """{{input:x}} {{output:verdict}}"""

    [output] = [s for s in judge.template if isinstance(s, Output)]
    assert output == Output("verdict", SamplingParams(
        temperature=0, max_tokens=8, repetition_penalty=1.3, logprobs=2,
        logit_bias={5: -100.0, 9: 2.5}, presence_penalty=0.5))  # fmt: skip
    assert output.sampling.logit_bias == ((5, -100.0), (9, 2.5))
    with pytest.raises(ValueError, match=r"logit_bias values must be in \[-100, 100\]"):
        P.Output(logit_bias={5: -101})


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "def f(x, y):\n    '''{{input:x}} {{output:y}} {{input:z}}'''",
            r"\{\{input:z\}\} names no parameter",
        ),
        (
            "def f(x, y, extra):\n    '''{{input:x}} {{output:y}}'''",
            "parameter 'extra' appears in no",
        ),
        ("def f(x):\n    '''{{input:x}}'''", r"no \{\{output:name\}\} placeholder"),
        (
            "def f(x, y):\n    '''{{input:x}} {{output:y}} {{output:y}}'''",
            r"\{\{output:y\}\} appears more",
        ),
        ("def f(x):\n    '''{{input:x}} {{output:x}}'''", "'x' is used both as an input and"),
        ("def f(x, y, *rest):\n    '''{{input:x}} {{output:y}}'''", "parameter 'rest': \\*args"),
        ("def f(x, y):\n    pass", "the docstring \\(the prompt template\\) is empty"),
        (
            "def f(x=3, y=None):\n    '''{{input:x}} {{output:y}}'''",
            "input 'x' may only default to a str",
        ),
        ("def f(x, y='no'):\n    '''{{input:x}} {{output:y}}'''", "output 'y' may only default to"),
        ("def f(x, y):\n    '''{{input:x}} {{outptu:y}}'''", r"placeholder '\{\{outptu:y\}\}'"),
    ],
)
def test_decoration_errors_name_the_offender(source: str, message: str) -> None:
    namespace: dict = {}
    exec(source, namespace)
    with pytest.raises(ValueError, match=message):
        P.semantic_function(namespace["f"])


def test_bad_sampling_names_the_field() -> None:
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0, got -1"):
        P.semantic_function(temperature=-1)
    with pytest.raises(ValueError, match="max_tokens must be an int >= 0, got -2"):
        P.Output(max_tokens=-2)


def test_three_call_chain_builds_one_exact_increment() -> None:
    step = make_step()
    with Session() as session:
        a = step("The sky is")
        b = step(a)
        c = step(text=b)
        assert (a.name, b.name, c.name) == ("step-1.out", "step-2.out", "step-3.out")
        graph = session.take_pending()
        assert session.take_pending() is None
    assert graph is not None
    assert graph.to_dict() == {
        "variables": [{"name": "step-1.text", "value": "The sky is"}],
        "calls": [
            {
                "id": f"step-{i}",
                "chat": True,
                "segments": [
                    {"text": "Continue: "},
                    {"input": source},
                    {"text": " "},
                    {"output": f"step-{i}.out", "sampling": GREEDY_8},
                ],
            }
            for i, source in ((1, "step-1.text"), (2, "step-1.out"), (3, "step-2.out"))
        ],
        "transforms": [],
    }


def test_several_outputs_return_a_tuple_in_parameter_order() -> None:
    @P.semantic_function(chat=False)
    def qa(topic, answer, question):
        """Topic: {{input:topic}}\nQ: {{output:question}}\nA: {{output:answer}}"""

    with Session() as session:
        answer, question = qa("birds")
        call = session.take_pending().calls[0]
    assert (answer.name, question.name) == ("qa-1.answer", "qa-1.question")
    assert call.chat is False
    assert call.outputs == ("qa-1.question", "qa-1.answer")


def test_input_default_is_a_constant_variable() -> None:
    @P.semantic_function
    def greet(name, greeting="Hello", out=P.Output()):
        """{{input:greeting}}, {{input:name}}! {{output:out}}"""

    with Session() as session:
        greet("Ada")
        graph = session.take_pending()
    assert graph.variables[0].name == "greet-1.name"
    assert [(v.name, v.value) for v in graph.variables] == [
        ("greet-1.name", "Ada"),
        ("greet-1.greeting", "Hello"),
    ]


def test_call_errors() -> None:
    step = make_step()
    with pytest.raises(RuntimeError, match="no active parrotlet session"):
        step("x")
    with Session():
        with pytest.raises(TypeError, match="'out' is an output; it is returned, not passed"):
            step("x", out="y")
        with pytest.raises(
            TypeError, match="input 'text' must be a SemanticVariable or str, got int"
        ):
            step(3)
        with pytest.raises(TypeError, match="step\\(\\): missing a required argument: 'text'"):
            step()


def test_ids_are_unique_per_session() -> None:
    step = make_step()
    with Session() as first:
        P.variable("step-1")
        assert step("a").name == "step-2.out"
        first.take_pending()
    with Session():
        assert step("a").name == "step-1.out"


def test_variable_from_another_session_is_rejected() -> None:
    step = make_step()
    with Session():
        foreign = step("a")
    with Session(), pytest.raises(ValueError, match="from another session"):
        step(foreign)
