"""OverrideParams of SubmitDynamicImageJob, checked against the template limits before any
quota is spent. Unknown fields pass through untouched: VOD has the last word on them."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from webhook.errors import explain

_CLIP_TIME = re.compile(r"\d{1,5}(\.\d{1,3})?|\d{1,2}:[0-5]\d:[0-5]\d(\.\d{1,3})?")


def _clip_time(value: str) -> str:
    if not _CLIP_TIME.fullmatch(value):
        raise ValueError("must be seconds as sssss[.SSS] or a time as hh:mm:ss[.SSS]")
    return value


ClipTime = Annotated[str, AfterValidator(_clip_time)]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class VideoOverride(_Open):
    width: int | None = Field(None, alias="Width", ge=128, le=4096)
    height: int | None = Field(None, alias="Height", ge=128, le=4096)
    fps: float | None = Field(None, alias="Fps", gt=0, le=60)


class ContainerOverride(_Open):
    format: Literal["gif", "webp"] | None = Field(None, alias="Format")


class TimeSpan(_Open):
    seek: ClipTime | None = Field(None, alias="Seek")
    duration: ClipTime | None = Field(None, alias="Duration")
    end: ClipTime | None = Field(None, alias="End")

    @model_validator(mode="after")
    def _duration_or_end(self) -> TimeSpan:
        if self.duration is not None and self.end is not None:
            raise ValueError("give Duration or End, not both")
        return self


class ClipOverride(_Open):
    time_span: TimeSpan | None = Field(None, alias="TimeSpan")


class Watermark(_Open):
    watermark_id: str = Field(alias="WatermarkId", min_length=1)


class OverrideParams(_Open):
    video: VideoOverride | None = Field(None, alias="Video")
    container: ContainerOverride | None = Field(None, alias="Container")
    clip: ClipOverride | None = Field(None, alias="Clip")
    watermarks: list[Watermark] | None = Field(None, alias="Watermarks")


class InvalidOverrides(ValueError):
    pass


def check_override_params(value: object) -> dict[str, Any]:
    """The OverrideParams object, validated; InvalidOverrides says precisely what is wrong."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise InvalidOverrides(f"OverrideParams is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidOverrides("OverrideParams must be a JSON object")
    try:
        OverrideParams.model_validate(value)
    except ValidationError as exc:
        raise InvalidOverrides(explain(exc, "OverrideParams")) from None
    return value
