"""Building the configured LLM provider from ``Settings``."""

from __future__ import annotations

from atoll.config import Settings
from atoll.errors import ConfigurationError
from atoll.runtime.llm.base import LLMProvider
from atoll.runtime.llm.offline import OfflineProvider


def build_llm_provider(settings: Settings) -> LLMProvider:
    """The provider ``settings.llm_provider`` names, configured from the settings."""
    if settings.llm_provider == "offline":
        return OfflineProvider(token_delay=settings.offline_token_delay)
    if settings.llm_provider == "openai":
        from atoll.runtime.llm.openai_compat import OpenAIProvider

        if not settings.llm_model:
            raise ConfigurationError("ATOLL_LLM_MODEL is required with ATOLL_LLM_PROVIDER=openai")
        key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
        return OpenAIProvider(
            model=settings.llm_model,
            base_url=settings.llm_base_url,
            api_key=key,
            timeout=settings.llm_timeout,
            stream_usage=settings.llm_stream_usage,
        )
    raise ConfigurationError(f"unknown LLM provider {settings.llm_provider!r}")
