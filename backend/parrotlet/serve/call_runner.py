"""CallRunner: runs one semantic call — assembles its prompt from token ids, places it on an
engine (or the engine holding its shared prefix), streams each output into its variable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

from parrotlet.graph.ir import Call, Input, Output, Text
from parrotlet.serve.engines import EngineHandle
from parrotlet.serve.objectives import CallPlan, engine_priority
from parrotlet.serve.prefix_sharing import SharedPrefix
from parrotlet.serve.prompt import PromptAssembler
from parrotlet.serve.requeue import Requeuer
from parrotlet.serve.session import Session

logger = logging.getLogger(__name__)

Place = Callable[[Session, Call, Sequence[int]], EngineHandle]


class CallRunner:
    """Generates a call's outputs in template order; `on_output` is told as each one is set."""

    def __init__(
        self,
        assembler: PromptAssembler,
        place: Place,
        max_model_len: int,
        app_scheduling: bool,
        on_output: Callable[[Session, str], None],
    ) -> None:
        self.assembler = assembler
        self.place = place
        self.max_model_len = max_model_len
        self.app_scheduling = app_scheduling
        self.on_output = on_output
        self.requeue = Requeuer()  # a call whose engine dies restarts on another one

    def prompt_prefix(self, session: Session, call: Call) -> list[int]:
        """The prompt ids up to the first output (all inputs of a ready call are set)."""
        return self.assembler.prefix_ids(call, lambda s: self._segment_ids(session, s))

    async def run(
        self,
        session: Session,
        call: Call,
        plan: CallPlan,
        prefix: list[int],
        share: SharedPrefix | None,
    ) -> None:
        """Generate the call's outputs; `prefix` is `prompt_prefix(session, call)`."""
        ids = list(prefix)
        engine = await self._engine_for(session, call, ids, share)
        seen_output = False
        for segment in call.segments:
            if isinstance(segment, Output):
                seen_output = True
                ids.extend(await self._generate(session, call, plan, segment, ids, engine))
            elif seen_output:
                ids.extend(self._segment_ids(session, segment))

    async def _engine_for(
        self, session: Session, call: Call, ids: list[int], share: SharedPrefix | None
    ) -> EngineHandle:
        """The engine with the shared prefix pinned (pinning it first if this call leads). A
        prefix the engine already holds whole is not pinned: the members find it cached, and
        a pin would only make them wait a step (and recompute its last block)."""
        if share is None:
            return self.place(session, call, ids)
        if share.engine is None:
            share.engine = self.place(session, call, ids)
            try:
                cached = share.engine.cached_prefix_len(share.prompt, share.namespace)
                if cached < len(share.prompt):
                    share.pin_id = await share.engine.pin_prefix(share.prompt, share.namespace)
            except Exception as exc:  # the members still run, only without the shared prefill
                logger.warning("pinning a shared prefix failed: %s", exc)
            finally:
                share.ready.set()
        await share.ready.wait()
        return share.engine

    def _segment_ids(self, session: Session, segment: Text | Input) -> list[int]:
        if isinstance(segment, Text):
            return list(self.assembler.encode(segment.text))
        state = session.var(segment.var)
        if state.token_ids is not None:
            return state.token_ids
        return list(self.assembler.encode(state.value or ""))

    async def _generate(
        self,
        session: Session,
        call: Call,
        plan: CallPlan,
        segment: Output,
        prompt: list[int],
        engine: EngineHandle,
    ) -> list[int]:
        """Generate one output variable; return the ids to continue the prompt with."""
        room = self.max_model_len - len(prompt)
        if room <= 0:
            raise ValueError(
                f"call {call.id!r}: prompt has {len(prompt)} tokens, "
                f"the model's context is {self.max_model_len}"
            )
        params = segment.sampling
        if params.max_tokens > room:
            params = replace(params, max_tokens=room, min_tokens=min(params.min_tokens, room))
        priority, group = 0, None
        if self.app_scheduling:
            priority = engine_priority(plan, session.ordinal)
            group = f"{session.id}/{plan.group}" if plan.group else None
        state = session.var(segment.var)
        final = await self.requeue.generate(
            engine,
            lambda: self.place(session, call, prompt),
            prompt,
            params,
            state.push,
            priority=priority,
            cache_namespace=session.tenant,
            group=group,
        )
        if final.error:
            raise RuntimeError(final.error)
        state.finish_reason = final.finish_reason.value if final.finish_reason else None
        state.prompt_tokens, state.completion_tokens = len(prompt), len(final.token_ids)
        spliced = self.assembler.spliceable_ids(final.text, final.token_ids)
        state.set(final.text, spliced)
        self.on_output(session, segment.var)
        return spliced if spliced is not None else list(self.assembler.encode(final.text))
