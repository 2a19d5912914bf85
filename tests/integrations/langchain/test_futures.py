"""SemanticText offline (a fake scope, no server): Python-level reads resolve and equal the real
text, templates and `+` keep references, output parsers see what plain LangChain would."""

from __future__ import annotations

import copy
import itertools
import pickle
import re

import pytest
from langchain_core.messages import HumanMessage
from langchain_core.output_parsers import BaseOutputParser, JsonOutputParser, StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate

from langchain_parrotlet.chat_models import SemanticAIMessage
from langchain_parrotlet.futures import (
    OPEN,
    Ref,
    SemanticText,
    aresolve_text,
    parts_of,
    register,
    resolve,
    resolve_text,
)
from langchain_parrotlet.parsers import install_parser_hooks

_IDS = itertools.count(1)


class FakeScope:
    """A graph scope whose outputs are given up front; records the outputs it fetched."""

    def __init__(self, values: dict[str, str], open: bool = True) -> None:
        self.id = f"t{next(_IDS)}"
        self.values = values
        self.fetched: list[str] = []
        self._open = open
        register(self)

    @property
    def open(self) -> bool:
        return self._open

    def known(self, var: str) -> bool:
        return var in self.fetched

    def value(self, var: str) -> str:
        if var not in self.fetched:  # a real scope fetches each output once
            self.fetched.append(var)
        return self.values[var]

    async def avalue(self, var: str) -> str:
        return self.value(var)

    def future(self, var: str) -> SemanticText:
        return SemanticText((Ref(self, var),))


def make_future(text: str = "Hello world") -> tuple[FakeScope, SemanticText]:
    scope = FakeScope({"a.out": text})
    return scope, scope.future("a.out")


def test_characters_are_a_reference_until_read() -> None:
    scope, future = make_future()
    assert isinstance(future, str)
    assert str.__str__(future) == f"{OPEN}{scope.id}#a.out\ue001"
    assert future.reference() == str.__str__(future)
    assert scope.fetched == []
    assert not future.resolved


def test_python_level_reads_resolve_to_the_real_text() -> None:
    scope, future = make_future("Hello world")
    assert str(future) == "Hello world" and type(str(future)) is str
    assert scope.fetched == ["a.out"]  # resolved once, then cached
    assert future == "Hello world" and "Hello world" == future and future != "x"  # noqa: SIM300
    assert len(future) == 11 and future[0] == "H" and future[-5:] == "world"
    assert list(future)[:3] == ["H", "e", "l"]
    assert "world" in future and "moon" not in future
    assert future.upper() == "HELLO WORLD" and future.split() == ["Hello", "world"]
    assert future.startswith("Hell") and future.replace("world", "moon") == "Hello moon"
    assert f"{future}!" == "Hello world!" and f"{future:>12}" == " Hello world"
    assert "[%s]" % future == "[Hello world]"  # noqa: UP031
    assert "{}".format(future) == "Hello world"  # noqa: UP032
    assert repr(future) == "'Hello world'" and hash(future) == hash("Hello world")
    assert future * 2 == "Hello worldHello world" and sorted([future, "A"]) == ["A", future]
    assert re.search(r"w\w+", str(future)).group(0) == "world"  # C functions: str() first
    assert scope.fetched == ["a.out"]


def test_numbers_pickle_and_copies() -> None:
    _, number = make_future("42")
    assert int(number) == 42 and float(number) == 42.0
    assert copy.copy(number) is number and copy.deepcopy(number) is number
    restored = pickle.loads(pickle.dumps(number))
    assert restored == "42" and type(restored) is str


def test_prompt_templates_keep_the_reference() -> None:
    scope, future = make_future()
    text = PromptTemplate.from_template("Summary:\n{summary}\nNext:").format(summary=future)
    assert text == f"Summary:\n{future.reference()}\nNext:"
    messages = ChatPromptTemplate.from_messages([("human", "Refine: {summary}")]).invoke(
        {"summary": future}
    )
    assert messages.to_messages()[0].content == f"Refine: {future.reference()}"
    assert scope.fetched == []
    assert resolve_text(text) == "Summary:\nHello world\nNext:"
    assert PromptTemplate.from_template("{s}").format(s=future) == "Hello world"  # known now


def test_closed_scope_formats_real_text() -> None:
    scope = FakeScope({"a.out": "done"}, open=False)
    assert PromptTemplate.from_template("[{x}]").format(x=scope.future("a.out")) == "[done]"


def test_concatenation_is_a_composite_future() -> None:
    scope, future = make_future("cat")
    other = scope.future("a.out")
    combined = "A " + future + " and " + other + "."
    assert isinstance(combined, SemanticText)
    assert [p if isinstance(p, str) else p.var for p in combined.parts] == [
        "A ",
        "a.out",
        " and ",
        "a.out",
        ".",
    ]
    assert scope.fetched == []
    assert combined == "A cat and cat."


def test_joined_text_carries_references() -> None:
    first, one = make_future("one")
    second, two = make_future("two")
    joined = "\n".join([one, two])  # C code reads the characters: references
    assert type(joined) is str and OPEN in joined
    parts = parts_of(joined)
    assert [(p.scope, p.var) if isinstance(p, Ref) else p for p in parts] == [
        (first, "a.out"),
        "\n",
        (second, "a.out"),
    ]
    assert resolve_text(joined) == "one\ntwo"
    assert resolve({"k": [joined, 3]}) == {"k": ["one\ntwo", 3]}
    assert resolve(HumanMessage(content=joined)).content == "one\ntwo"


def test_reference_to_a_vanished_scope_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"graph scope that no longer exists"):
        parts_of(f"{OPEN}zz9#lc-1.out\ue001")


class FirstWord(BaseOutputParser[str]):
    def parse(self, text: str) -> str:
        match = re.match(r"\w+", text)  # C code: needs real characters
        return match.group(0) if match else ""


def test_output_parsers_see_what_plain_langchain_sees() -> None:
    install_parser_hooks()
    scope, future = make_future('{"answer": 7}')
    assert StrOutputParser().invoke(future) is future
    assert StrOutputParser().invoke(SemanticAIMessage.of(future)) is future
    assert scope.fetched == []
    assert JsonOutputParser().invoke(future) == {"answer": 7}
    _, words = make_future("Paris is large")
    assert FirstWord().invoke(words) == "Paris"
    assert FirstWord().invoke(SemanticAIMessage.of(words)) == "Paris"
    assert StrOutputParser().invoke("plain") == "plain"


@pytest.mark.anyio
async def test_async_parsers_and_resolution() -> None:
    install_parser_hooks()
    scope, future = make_future("Paris is large")
    assert await StrOutputParser().ainvoke(future) is future
    assert await FirstWord().ainvoke(future) == "Paris"
    assert await aresolve_text("x " + future) == "x Paris is large"
    assert await future.aresolve() == "Paris is large"
    assert scope.fetched == ["a.out"]
