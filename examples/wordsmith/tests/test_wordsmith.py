"""The plugin's own tests, with Atoll's test helper: the real engine, in-process."""

from __future__ import annotations

from atoll.testing import ScriptedModel, call_tool, run_agent, say


async def test_it_measures_the_text_and_streams_the_answer() -> None:
    run = await run_agent("wordsmith", "Short words win. Every time.", plugins=["atoll_wordsmith"])
    assert run.state == "completed"
    assert run.answer is not None
    assert run.answer.startswith("5 words in 2 sentence(s)")
    assert [r.tool for r in run.tool_results()] == ["text_stats"]
    deltas = "".join(e.data["delta"] for e in run.of_type("message_delta"))
    assert deltas == run.answer  # what was streamed is what is stored


async def test_the_models_advice_comes_last() -> None:
    model = ScriptedModel(say("Cut the adverbs."))
    run = await run_agent(
        "wordsmith", "Really very good.", plugins=["atoll_wordsmith"], model=model
    )
    assert run.answer is not None
    assert run.answer.endswith("Cut the adverbs.")
    assert model.calls[0][-1].content == "Really very good."


async def test_house_style_is_only_for_editors() -> None:
    script = (call_tool("house_style", style="plain"), say("Done."))
    editor = await run_agent(
        "assistant", "style?", plugins=["atoll_wordsmith"], model=ScriptedModel(*script),
        roles=["editor"],
    )  # fmt: skip
    assert editor.tool_results()[0].ok
    assert editor.tool_results()[0].result["rule"].startswith("Short sentences")
    other = await run_agent(
        "assistant", "style?", plugins=["atoll_wordsmith"], model=ScriptedModel(*script)
    )
    refused = other.tool_results()[0]
    assert not refused.ok
    assert refused.error is not None
    assert refused.error["code"] == "tool_forbidden"


async def test_a_text_without_words_is_a_tool_error_said_in_words() -> None:
    run = await run_agent("wordsmith", "?!", plugins=["atoll_wordsmith"])
    assert run.state == "completed"
    assert run.answer == "I could not measure that: there are no words in this text."
