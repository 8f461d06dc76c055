"""What vod.py makes of VOD's answers before anyone sees them."""

from __future__ import annotations

from webhook.vod import masked_message_callback


def test_the_callback_setting_is_shown_without_its_auth_key() -> None:
    current = {"CallbackType": "HTTP", "CallbackURL": "https://h.example.com/cb",
               "AuthSwitch": "on", "AuthKey": "Rotate2026KeyAbcd"}  # fmt: skip
    shown = masked_message_callback(current)
    assert shown == current | {"AuthKey": "Ro***"}
    assert list(shown) == list(current)  # printed in VOD's order
    assert current["AuthKey"] == "Rotate2026KeyAbcd"  # the answer itself is left as it was
    # Nothing to hide: unsigned, or no callback set at all.
    assert masked_message_callback({"AuthSwitch": "off", "AuthKey": ""}) == {
        "AuthSwitch": "off",
        "AuthKey": "",
    }
    assert masked_message_callback({}) == {}
