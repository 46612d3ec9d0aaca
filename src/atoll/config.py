"""The one ``Settings`` object: every option, read from ``ATOLL_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Atoll's configuration. Every field is ``ATOLL_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="ATOLL_", extra="ignore")

    data_dir: Path = Field(Path("./atoll-data"), description="Where the SQLite file and keys live")

    llm_provider: Literal["offline", "openai"] = "offline"
    llm_base_url: str | None = None
    llm_api_key: SecretStr | None = None
    llm_model: str = ""
    llm_timeout: float = Field(120.0, gt=0)
    llm_stream_usage: bool = True
    offline_token_delay: float = Field(0.0, ge=0, description="Seconds between offline deltas")

    max_concurrent_runs: int = Field(3, ge=1)
    run_overflow: Literal["wait", "reject"] = "wait"
    run_timeout: float = Field(300.0, gt=0)
    heartbeat_timeout: float = Field(30.0, gt=0)
    tool_timeout: float = Field(30.0, gt=0)
    tool_calls_per_minute: int = Field(120, ge=1)

    knowledge_dirs: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    plugins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("knowledge_dirs", "plugins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        """Accept comma-separated lists from the environment."""
        return _split_csv(value)
