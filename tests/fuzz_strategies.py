"""Hypothesis strategies for fuzzing every endpoint: callback bodies built from the
DynamicImageComplete schema and mutated deep inside, headers, paths and methods."""

from __future__ import annotations

import json
import time
from typing import Any

from hypothesis import strategies as st

from tests.conftest import AUTH_KEY, CALLBACK_URL
from webhook.signature import sign

JsonValue = Any

# Text with what breaks parsers and encoders: lone surrogates, control characters, NUL, BOM.
nasty_chars = st.one_of(
    st.characters(),
    st.characters(categories=["Cs"]),  # lone surrogates, sent escaped as \ud800
    st.characters(categories=["Cc", "Cf", "Zl", "Zp"]),
    st.sampled_from(["\x00", "\ufeff", "\u2028", "\r", "\n", "\\", '"', "%", "/"]),
)
nasty_text = st.text(nasty_chars, max_size=40)
huge_text = st.integers(0, 70_000).map(lambda n: "x" * n)
texts = st.one_of(nasty_text, huge_text, st.just(""), st.just(" "))

weird_numbers = st.one_of(
    st.integers(),
    st.integers(-(10**400), 10**400),
    st.floats(),  # NaN, ±inf, -0.0, subnormals
    st.booleans(),
    st.sampled_from(["1e999", "NaN", "Infinity", "-1", "0x10", " 7 ", "1_000", "", "10.5", "-0"]),
    st.none(),
)


def deep(depth: int, opener: str = "[", closer: str = "]") -> str:
    return opener * depth + closer * depth


# Depths around the limits of json, pydantic and Python's recursion (about 1,000 frames).
depths = st.sampled_from([2, 127, 128, 129, 255, 256, 257, 999, 1000, 1001, 5000, 20_000, 50_000])
depths = depths | st.integers(1, 50_000)
deep_json = st.one_of(
    depths.map(deep),
    depths.map(lambda n: '{"a":' * n + "1" + "}" * n),
    depths.map(lambda n: deep(n) + "]"),  # unbalanced
)


def mostly(
    valid: st.SearchStrategy[Any], *invalid: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """`valid` three times in four, so the cases get past the first check and reach deep."""
    return st.one_of(valid, valid, valid, st.one_of(*invalid))


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), weird_numbers, texts),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(nasty_text, inner, max_size=4),
    max_leaves=12,
)

urls = mostly(
    st.just("https://vod.example.com/dynamic/e6b8a1c2.gif"),
    st.builds(lambda tail: f"http://x/{tail}", nasty_text),
    st.builds(lambda char: f"http://x/{char}", st.characters(categories=["Cs", "Cc"])),
    st.sampled_from(["", " ", "javascript:alert(1)", "ftp://x/y.gif", "http://", "//x/y.gif"]),
    texts,
)
job_ids = mostly(
    st.uuids().map(lambda u: u.hex), st.just("b1e7a3c59e2f4d6f8a0b1c2d3e4f5a6b"), texts
)


@st.composite
def job_infos(draw: st.DrawFn, job_id: str, status: JsonValue) -> dict[str, JsonValue]:
    info: dict[str, JsonValue] = {
        "JobId": draw(mostly(st.just(job_id), job_ids, weird_numbers)),
        "Status": draw(mostly(st.just(status), st.sampled_from(["success", "fail"]), texts)),
        "FileURL": draw(urls),
    }
    for name in ("FileSize", "Fps", "Width", "Height"):
        info[name] = draw(mostly(st.integers(1, 4096).map(str), st.integers(0, 60), weird_numbers))
    for name in draw(st.sets(st.sampled_from(list(info)), max_size=2)):
        del info[name]  # fields left out
    info.update(draw(st.dictionaries(nasty_text, json_values, max_size=2)))  # extra fields
    return info


def _dumps(value: JsonValue) -> str:
    # ensure_ascii escapes lone surrogates as \ud800; allow_nan writes NaN/Infinity as Python does.
    return json.dumps(value, ensure_ascii=True, allow_nan=True)


@st.composite
def job_info_fields(draw: st.DrawFn, job_id: str, status: JsonValue) -> JsonValue:
    """DynamicImageJobInfo as VOD sends it (object, list of one, JSON string of either) or worse."""
    info = draw(job_infos(job_id, status))
    as_sent = st.sampled_from([info, [info], _dumps(info), _dumps([info])])
    odd = st.sampled_from([[info, info], [], "", "null", _dumps(_dumps(info)), _dumps(info)[:-1]])
    return draw(
        st.one_of(as_sent, as_sent, as_sent, odd, deep_json, deep_json.map(_dumps), json_values)
    )


@st.composite
def dynamic_image_events(draw: st.DrawFn) -> dict[str, JsonValue]:
    job_id = draw(job_ids)
    status = draw(mostly(st.sampled_from(["success", "fail"]), texts, weird_numbers))
    event: dict[str, JsonValue] = {
        "EventTime": draw(
            mostly(
                st.sampled_from(["2017-03-20T07:49:17Z", "2017-03-20T07:49:17:123Z"]),
                st.sampled_from(
                    ["2017-13-40T25:61:61Z", "9999-12-31T23:59:59.999999Z", "0000-00-00T00:00:00Z"]
                ),
                texts,
                weird_numbers,
            )
        ),
        "EventType": draw(mostly(st.just("DynamicImageComplete"), texts, weird_numbers)),
        "VideoId": draw(mostly(st.just("3d97d4aa1e5c4fb8a2f1c0b9e4d213dd"), texts, weird_numbers)),
        "Status": status,
        "JobId": job_id,
        "DynamicImageJobInfo": draw(job_info_fields(job_id, status)),
        "ErrorCode": draw(mostly(st.just("InvalidParameter.Seek"), texts, weird_numbers)),
        "ErrorMessage": draw(
            mostly(st.just("Clip seek time exceeds the video duration"), texts, json_values)
        ),
    }
    for name in draw(st.sets(st.sampled_from(list(event)), max_size=2)):
        del event[name]
    return event


other_events = st.fixed_dictionaries(
    {
        "EventType": st.one_of(
            st.sampled_from(["FileUploadComplete", "AIMediaAuditComplete"]), texts
        ),
        "EventTime": st.one_of(st.just("2017-03-20T07:49:17Z"), texts, weird_numbers),
        "MediaId": st.one_of(texts, weird_numbers),
        "VideoId": st.one_of(texts, weird_numbers),
        "Status": st.one_of(texts, weird_numbers),
    },
    optional={"Data": json_values, "JobId": st.one_of(job_ids, weird_numbers)},
)


def _mutate(raw: bytes, data: st.DataObject) -> bytes:
    how = data.draw(st.sampled_from(["as is", "truncate", "bom", "latin1", "prefix", "splice"]))
    if how == "truncate" and raw:
        return raw[: data.draw(st.integers(0, len(raw) - 1))]
    if how == "bom":
        return b"\xef\xbb\xbf" + raw
    if how == "latin1":
        return raw.replace(b'"', b'"\xe9', 1)
    if how == "prefix":
        return data.draw(st.binary(max_size=8)) + raw
    if how == "splice" and raw:
        at = data.draw(st.integers(0, len(raw)))
        return raw[:at] + data.draw(st.binary(max_size=8)) + raw[at:]
    return raw


VALID_INFO = {
    "Status": "success",
    "FileURL": "https://vod.example.com/dynamic/e6b8a1c2.gif",
    "FileSize": "102400",
    "Fps": "10",
    "Width": "320",
    "Height": "180",
}
VALID_EVENT = {
    "EventTime": "2017-03-20T07:49:17Z",
    "EventType": "DynamicImageComplete",
    "VideoId": "3d97d4aa1e5c4fb8a2f1c0b9e4d213dd",
    "Status": "success",
}
leaf_values = st.one_of(
    nasty_text,
    texts,
    weird_numbers,
    json_values,
    deep_json,
    st.builds(lambda char: f"http://x/{char}", st.characters(categories=["Cs", "Cc", "Co"])),
)


@st.composite
def one_bad_leaf(draw: st.DrawFn) -> bytes:
    """A valid VOD event with exactly one field (of the event or its job info) replaced or
    added, the job info sent in each of VOD's forms: reaches every field's validation."""
    job_id = draw(st.uuids()).hex
    info: dict[str, JsonValue] = {"JobId": job_id, **VALID_INFO}
    event: dict[str, JsonValue] = {**VALID_EVENT, "JobId": job_id}
    # Changed before it is encoded, so a bad leaf inside the job info is sent in every form.
    target = draw(st.sampled_from([info, event]))
    name = draw(st.one_of(st.sampled_from([*target, "DynamicImageJobInfo"]), nasty_text))
    target[name] = draw(leaf_values)
    if "DynamicImageJobInfo" not in event:
        form = draw(st.sampled_from(["object", "list", "string", "list string"]))
        event["DynamicImageJobInfo"] = {
            "object": info,
            "list": [info],
            "string": _dumps(info),
            "list string": _dumps([info]),
        }[form]
    return _dumps(event).encode()


@st.composite
def callback_bodies(draw: st.DrawFn) -> bytes:
    """Mostly JSON objects shaped like VOD events, sometimes mangled; deep nesting; raw bytes."""
    kind = draw(
        st.sampled_from(
            ["leaf", "leaf", "leaf", "event", "event", "other", "json", "deep", "bytes"]
        )
    )
    if kind == "leaf":
        return draw(one_bad_leaf())
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "deep":
        return draw(deep_json).encode()
    value = {
        "event": dynamic_image_events(),
        "other": other_events,
        "json": json_values,
    }[kind]
    raw = _dumps(draw(value)).encode()
    return _mutate(raw, draw(st.data())) if draw(st.integers(0, 3)) == 0 else raw


header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=80
)


@st.composite
def timestamps(draw: st.DrawFn) -> str | None:
    now = int(time.time())
    stamp: str | None = draw(
        st.one_of(
            st.just(str(now)),
            st.integers(-(10**20), 10**20).map(str),
            st.sampled_from([now - 301, now + 301, now - 300, now + 299]).map(str),
            st.sampled_from(
                ["", " ", "1e9", "١٢٣".encode().decode("latin-1"), f" {now}", f"{now}.5", "+1"]
            ),
            header_text,
            st.none(),
        )
    )
    return stamp


@st.composite
def signed_callback_headers(draw: st.DrawFn) -> dict[str, str]:
    """X-VOD-TIMESTAMP / X-VOD-SIGNATURE, valid or each mutated, plus the other headers."""
    stamp = draw(timestamps())
    good = sign(CALLBACK_URL, stamp if stamp is not None else "", AUTH_KEY)
    signature = draw(
        st.one_of(
            st.just(good),
            st.just(good.upper()),
            st.just(good[:-1]),
            st.just(good + "0"),
            st.just(sign(CALLBACK_URL, str(int(time.time())), AUTH_KEY)),
            header_text,
            st.none(),
        )
    )
    headers = {}
    if stamp is not None:
        headers["X-VOD-TIMESTAMP"] = stamp
    if signature is not None:
        headers["X-VOD-SIGNATURE"] = signature
    headers.update(draw(extra_headers()))
    return headers


@st.composite
def extra_headers(draw: st.DrawFn) -> dict[str, str]:
    names = st.sampled_from(
        ["X-Request-Id", "Content-Type", "Authorization", "Last-Event-ID", "Accept", "Content-Encoding",
         "X-Forwarded-For", "Cookie"]
    )  # fmt: skip
    return draw(st.dictionaries(names, header_text, max_size=4))
