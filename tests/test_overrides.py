import json

import pytest

from webhook.overrides import InvalidOverrides, check_override_params
from webhook.submitter import JobSpec


def test_documented_example_and_unknown_fields_pass_through() -> None:
    overrides = {
        "Watermarks": [{"WatermarkId": "9a8b7c", "Content": "UserID: 666"}],
        "Video": {"Width": "320", "Height": 180, "Fps": 12.5},
        "Container": {"Format": "webp"},
        "Clip": {"TimeSpan": {"Seek": "00:00:01.500", "End": "12.25"}},
        "SomethingNew": {"a": 1},
    }
    assert check_override_params(json.dumps(overrides)) == overrides


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ("{nope", "OverrideParams is not valid JSON"),
        ("[]", "must be a JSON object"),
        ({"Video": {"Width": 127}}, "OverrideParams.Video.Width: Input should be greater than or equal to 128"),
        ({"Video": {"Height": 4097}}, "OverrideParams.Video.Height: Input should be less than or equal to 4096"),
        ({"Video": {"Fps": 0}}, "OverrideParams.Video.Fps: Input should be greater than 0"),
        ({"Video": {"Fps": 61}}, "OverrideParams.Video.Fps"),
        ({"Container": {"Format": "mp4"}}, "OverrideParams.Container.Format: Input should be 'gif' or 'webp'"),
        ({"Clip": {"TimeSpan": {"Seek": "1 minute"}}}, "OverrideParams.Clip.TimeSpan.Seek: must be seconds"),
        ({"Clip": {"TimeSpan": {"Seek": "00:61:00"}}}, "Seek"),
        ({"Clip": {"TimeSpan": {"Duration": "3", "End": "5"}}}, "give Duration or End, not both"),
        ({"Watermarks": [{"Content": "x"}]}, "OverrideParams.Watermarks.0.WatermarkId: Field required"),
        ({"Watermarks": {"WatermarkId": "x"}}, "OverrideParams.Watermarks"),
    ],
)  # fmt: skip
def test_limits_are_checked_with_precise_messages(overrides: object, message: str) -> None:
    with pytest.raises(InvalidOverrides) as caught:
        check_override_params(overrides)
    assert message in str(caught.value)


def test_batch_lines_are_validated_and_fingerprinted() -> None:
    line = '{"video_id": "v1", "template_id": "t1", "override_params": {"Video": {"Width": 320}}, "tags": {"a": "b"}}'
    spec = JobSpec.model_validate_json(line)
    assert spec.override_params == {"Video": {"Width": 320}}
    reordered = JobSpec.model_validate_json(
        '{"tags": {"a": "b"}, "template_id": "t1", "video_id": "v1", '
        '"override_params": "{\\"Video\\": {\\"Width\\": 320}}"}'
    )
    assert reordered.fingerprint() == spec.fingerprint()
    assert JobSpec(video_id="v1", template_id="t2").fingerprint() != spec.fingerprint()
    with pytest.raises(ValueError, match="video_id"):
        JobSpec.model_validate_json('{"template_id": "t"}')
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        JobSpec.model_validate_json('{"video_id": "v", "template_id": "t", "typo": 1}')
