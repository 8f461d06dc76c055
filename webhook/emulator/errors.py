"""Error answers in the shape Alibaba Cloud's gateway (POP) gives them."""

from __future__ import annotations

from starlette.responses import JSONResponse

HOST_ID = "vod.cn-shanghai.aliyuncs.com"


class PopError(Exception):
    """An error answer, in the shape Alibaba Cloud's gateway (POP) gives it."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def missing_parameter(name: str) -> PopError:
    return PopError(
        400,
        "MissingParameter",
        f'The input parameter "{name}" that is mandatory for processing this request is not '
        "supplied.",
    )


def invalid_parameter(name: str, why: str) -> PopError:
    return PopError(
        400, "InvalidParameter", f'The specified parameter "{name}" is not valid: {why}.'
    )


def signature_mismatch(why: str) -> PopError:
    return PopError(
        400,
        "SignatureDoesNotMatch",
        f"Specified signature is not matched with our calculation ({why}).",
    )


def incomplete_signature(why: str) -> PopError:
    return PopError(
        400,
        "IncompleteSignature",
        f"The request signature does not conform to Aliyun standards ({why}).",
    )


def internal_error() -> PopError:
    return PopError(
        500, "InternalError", "The request processing has failed due to some unknown error."
    )


def error_response(error: PopError, request_id: str) -> JSONResponse:
    return JSONResponse(
        {
            "RequestId": request_id,
            "HostId": HOST_ID,
            "Code": error.code,
            "Message": error.message,
            "Recommend": f"https://api.aliyun.com/troubleshoot?q={error.code}&product=vod"
            f"&requestId={request_id}",
        },
        status_code=error.status,
        headers={"x-acs-request-id": request_id},
    )
