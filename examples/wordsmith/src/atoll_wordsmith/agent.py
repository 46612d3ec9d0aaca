"""The ``wordsmith`` agent: its own loop, not a model's tool-calling loop."""

from __future__ import annotations

from atoll import Agent, AgentRunContext, ChatMessage, SubAgentError, TextDelta

PROMPT = "You are a writing coach. In one sentence, say how to make this text clearer."


class WordsmithAgent(Agent):
    """Measures the user's text with a tool, then asks the model for one piece of advice."""

    name = "wordsmith"
    description = "Measures a text (words, sentences, longest word) and suggests one improvement."
    tools = ("text_stats",)  # what the dispatcher offers this agent (None: every allowed tool)
    specialist = True  # the supervisor may delegate to it

    async def run(self, run: AgentRunContext) -> str:
        await run.thinking("Measuring the text.", step=1)
        stats = await run.tools.call("text_stats", {"text": run.input})
        if not stats.ok:
            # A tool failure is a result, not an exception: say it in words.
            answer = f"I could not measure that: {stats.error['message']}."
            await run.delta(answer)
            return answer
        counts = stats.result
        opening = (
            f"{counts['words']} words in {counts['sentences']} sentence(s); "
            f"the longest word is “{counts['longest']}”.\n\n"
        )
        await run.delta(opening)  # streamed to the user as it is produced
        if counts["words"] > 3 and any(ch.isdigit() for ch in run.input):
            # A sub-agent: runs under a child context; its events carry parent_agent.
            await run.thinking("The text has numbers: asking the assistant to check them.", 2)
            try:
                checked = await run.call_agent("assistant", f"Check the numbers: {run.input}")
            except SubAgentError as error:
                checked = f"(the check failed: {error.error.get('message')})"
            await run.delta(f"Numbers: {checked}\n\n")
            opening += f"Numbers: {checked}\n\n"
        advice: list[str] = []
        messages = [ChatMessage("system", PROMPT), *run.history, ChatMessage("user", run.input)]
        async for chunk in run.llm.stream(messages):
            if isinstance(chunk, TextDelta):
                advice.append(chunk.text)
                await run.delta(chunk.text)
        return opening + "".join(advice)
