"""``supervisor``: triage to specialist sub-agents, then a report from their findings.

The specialists are offered to the model as functions (``ask_<agent>``); the
model's calls are the triage decision. Each call runs the sub-agent under a
child context — its events carry its name and the supervisor as parent — and
its answer goes back to the model, which writes the final report.
"""

from __future__ import annotations

import orjson

from atoll.errors import SubAgentError, ToolValidationError
from atoll.runtime.agents.assistant import stream_step, tool_message
from atoll.runtime.agents.base import Agent, AgentRunContext
from atoll.runtime.llm.base import ChatMessage, ToolSpec

TRIAGE_PROMPT = (
    "You are Atoll's supervisor. Decide which specialists should work on the user's request "
    "and call them with a precise task each. If none is needed, answer directly."
)
REPORT_PROMPT = (
    "You are Atoll's supervisor. Write the final answer to the user from the specialists' "
    "findings. Be concise and do not invent facts they did not report."
)
DELEGATE_PREFIX = "ask_"


def delegation_spec(name: str, description: str) -> ToolSpec:
    """The function through which the model delegates a task to specialist ``name``."""
    return ToolSpec(
        f"{DELEGATE_PREFIX}{name}",
        f"Delegate a task to the {name} specialist. {description}",
        {
            "type": "object",
            "properties": {"task": {"type": "string", "description": "The task, self-contained"}},
            "required": ["task"],
            "additionalProperties": False,
        },
    )


class SupervisorAgent(Agent):
    """Triage, delegation to specialists, report."""

    name = "supervisor"
    description = (
        "Supervisor that triages the request, delegates it to specialist agents and writes "
        "a report from their findings."
    )
    specialist = False

    async def run(self, run: AgentRunContext) -> str:
        """Triage, delegate, report."""
        specialists = {name: cls for name, cls in run.agents.items() if cls.specialist}
        specs = [delegation_spec(name, cls.description) for name, cls in specialists.items()]
        messages: list[ChatMessage] = [
            ChatMessage("system", TRIAGE_PROMPT),
            *run.history,
            ChatMessage("user", run.input),
        ]
        text, calls = await stream_step(run, messages, specs, stream_text=False)
        chosen = [c for c in calls if c.name.removeprefix(DELEGATE_PREFIX) in specialists]
        if not chosen:
            await run.thinking("Triage: no specialist needed; answering directly.")
            if text:
                await run.delta(text)
            return text
        names = ", ".join(c.name.removeprefix(DELEGATE_PREFIX) for c in chosen)
        await run.thinking(f"Triage: delegating to {names}.")
        messages.append(ChatMessage("assistant", text, tool_calls=tuple(chosen)))
        for call in chosen:
            agent = call.name.removeprefix(DELEGATE_PREFIX)
            try:
                task = str(call.parsed_arguments().get("task") or run.input)
            except ToolValidationError:
                task = run.input
            try:
                finding = await run.call_agent(agent, task)
            except SubAgentError as exc:
                finding = orjson.dumps({"ok": False, "error": exc.error}).decode()
            messages.append(tool_message(call, finding))
        messages[0] = ChatMessage("system", REPORT_PROMPT)
        report, _ = await stream_step(run, messages, ())
        return report
