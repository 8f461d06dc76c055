"""MNS's wire format: XML documents in its namespace, both ways, and its error answers.

Error codes, messages and status codes are MNS's own (its "Error codes" reference); where the
message alone would leave a caller guessing, the emulator adds why in parentheses.
"""

from __future__ import annotations

import uuid
from xml.etree import ElementTree

from starlette.responses import Response

from webhook.mns_signature import MNS_VERSION

XMLNS = "http://mns.aliyuncs.com/doc/v1/"
HOST_ID = "http://emulator.mns.cn-shanghai.aliyuncs.com"
XML_CONTENT_TYPE = "text/xml;charset=utf-8"


class MnsError(Exception):
    """An error answer, in the shape MNS gives it."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def invalid_argument(message: str) -> MnsError:
    return MnsError(400, "InvalidArgument", message)


def out_of_range(name: str, low: int, high: int, unit: str = "seconds") -> MnsError:
    return invalid_argument(f"The value of {name} should between {low} and {high} {unit}.")


def malformed_xml(why: str) -> MnsError:
    return MnsError(400, "MalformedXML", f"The XML you provided was not well-formed: {why}.")


def not_in_schema(element: str) -> MnsError:
    return invalid_argument(
        f"The XML you provided did not validate against our published schema, cause by {element}."
    )


def queue_not_exist() -> MnsError:
    return MnsError(404, "QueueNotExist", "The queue name you provided is not exist.")


def message_not_exist(why: str) -> MnsError:
    return MnsError(404, "MessageNotExist", f"Message not exist ({why}).")


def receipt_handle_error() -> MnsError:
    return MnsError(400, "ReceiptHandleError", "The receipt handle you provide is not valid.")


def new_request_id() -> str:
    return uuid.uuid4().hex[:24].upper()


def parse_document(body: bytes, *roots: str) -> ElementTree.Element:
    """The request body's root element, which must be one of `roots` (in MNS's namespace or
    none)."""
    if b"<!DOCTYPE" in body.upper():
        # No entity declarations: nothing MNS takes uses them, and they can expand without end.
        raise malformed_xml("a DOCTYPE is not allowed")
    try:
        element = ElementTree.fromstring(body)
    except ElementTree.ParseError as error:
        raise malformed_xml(str(error)) from None
    if local_name(element) not in roots:
        expected = " or ".join(roots)
        raise not_in_schema(f"the root element {local_name(element)} (expected {expected})")
    return element


def local_name(element: ElementTree.Element) -> str:
    return element.tag.rpartition("}")[2]


def children_text(element: ElementTree.Element) -> dict[str, str]:
    """Each child element's text by its local name (the last one wins)."""
    return {local_name(child): (child.text or "").strip() for child in element}


def xml_element(tag: str, fields: dict[str, str]) -> ElementTree.Element:
    element = ElementTree.Element(tag)
    for name, text in fields.items():
        ElementTree.SubElement(element, name).text = text
    return element


def xml_document(root: str, children: list[ElementTree.Element] | dict[str, str]) -> bytes:
    """`<root xmlns=MNS>` holding `children` (elements, or name -> text)."""
    if isinstance(children, dict):
        element = xml_element(root, children)
    else:
        element = ElementTree.Element(root)
        element.extend(children)
    element.set("xmlns", XMLNS)
    document: bytes = ElementTree.tostring(element, encoding="utf-8", xml_declaration=True)
    return document


def mns_response(
    body: bytes | None, request_id: str, status_code: int, headers: dict[str, str] | None = None
) -> Response:
    """An answer with MNS's headers; an XML body, or none (204)."""
    return Response(
        body,
        status_code=status_code,
        media_type=XML_CONTENT_TYPE if body is not None else None,
        headers={"x-mns-request-id": request_id, "x-mns-version": MNS_VERSION, **(headers or {})},
    )


def error_response(error: MnsError, request_id: str) -> Response:
    body = xml_document(
        "Error",
        {"Code": error.code, "Message": error.message, "RequestId": request_id, "HostId": HOST_ID},
    )
    return mns_response(body, request_id, error.status)
