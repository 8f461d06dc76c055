"""The RPC endpoint: each request authenticated, versioned and throttled, then run by its Action."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from webhook.emulator.auth import Authenticator
from webhook.emulator.delivery import CallbackDelivery
from webhook.emulator.errors import (
    PopError,
    error_response,
    internal_error,
    invalid_parameter,
    missing_parameter,
)
from webhook.emulator.jobs import JobRunner, listed_image, parse_override_params
from webhook.emulator.quotas import Quotas
from webhook.signature import auth_key_problem, callback_url_problem

# Every module of the emulator logs under one name, the package's.
logger = structlog.get_logger("webhook.emulator")

API_VERSION = "2017-03-21"

Action = Callable[[Mapping[str, str]], dict[str, Any]]


def required(params: Mapping[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise missing_parameter(name)
    return value


def check_video(video_id: str) -> None:
    """The emulator's stand-in for VOD's video lookup (see the package docstring)."""
    if video_id.startswith("notfound-"):
        raise PopError(404, "InvalidVideo.NotFound", "The video does not exist.")
    if video_id.startswith("illegal-"):
        raise PopError(400, "Forbidden.IllegalStatus", "Status of the video is illegal.")
    if video_id.startswith("internalerror-"):
        raise internal_error()


def new_request_id() -> str:
    return str(uuid.uuid4()).upper()


class Actions:
    """SubmitDynamicImageJob, ListDynamicImage, SetMessageCallback and GetMessageCallback."""

    def __init__(
        self,
        *,
        authenticator: Authenticator,
        quotas: Quotas,
        jobs: JobRunner,
        delivery: CallbackDelivery,
    ) -> None:
        self._authenticator = authenticator
        self._quotas = quotas
        self._jobs = jobs
        self._delivery = delivery
        self._actions: dict[str, Action] = {
            "SubmitDynamicImageJob": self.submit_dynamic_image_job,
            "ListDynamicImage": self.list_dynamic_image,
            "SetMessageCallback": self.set_message_callback,
            "GetMessageCallback": self.get_message_callback,
        }

    async def dispatch(self, request: Request) -> Response:
        """Answer a POP RPC request: the action's result, or the error in POP's shape."""
        request_id = new_request_id()
        action = request.headers.get("x-acs-action")
        try:
            access_key_id, params = await self._authenticator.authenticate(request)
            if request.headers["x-acs-version"] != API_VERSION:
                raise PopError(400, "InvalidVersion", "Specified parameter Version is not valid.")
            run = self._actions.get(action or "")
            if run is None:
                raise PopError(
                    404,
                    "InvalidAction.NotFound",
                    "Specified api is not found, please check your url and method.",
                )
            if not self._quotas.admit(access_key_id, action or ""):
                raise PopError(
                    400, "Throttling.User", "Request was denied due to user flow control."
                )
            body = run(params)
        except PopError as error:
            logger.info(
                "request_rejected",
                action=action,
                code=error.code,
                status=error.status,
                request_id=request_id,
            )
            return error_response(error, request_id)
        except Exception:
            logger.exception("request_failed", action=action, request_id=request_id)
            return error_response(internal_error(), request_id)
        return JSONResponse(
            {"RequestId": request_id, **body}, headers={"x-acs-request-id": request_id}
        )

    def submit_dynamic_image_job(self, params: Mapping[str, str]) -> dict[str, Any]:
        video_id = required(params, "VideoId")
        template_id = required(params, "DynamicImageTemplateId")
        spec = parse_override_params(params.get("OverrideParams"))
        check_video(video_id)
        job = self._jobs.submit(video_id, template_id, spec)
        return {"DynamicImageJob": {"JobId": job.job_id}}

    def list_dynamic_image(self, params: Mapping[str, str]) -> dict[str, Any]:
        video_id = required(params, "VideoId")
        check_video(video_id)
        images = [
            listed_image(job, job.image)
            for job in self._jobs.jobs.values()
            if job.video_id == video_id and job.image is not None
        ]
        return {"DynamicImageList": images}

    def set_message_callback(self, params: Mapping[str, str]) -> dict[str, Any]:
        # What is not given is left as it was.
        current = self._delivery.message_callback
        updated = replace(
            current,
            callback_type=params.get("CallbackType", current.callback_type),
            callback_url=params.get("CallbackURL", current.callback_url),
            event_type_list=params.get("EventTypeList", current.event_type_list),
            auth_switch=params.get("AuthSwitch", current.auth_switch),
            auth_key=params.get("AuthKey", current.auth_key),
            app_id=params.get("AppId", current.app_id),
            mns_endpoint=params.get("MnsEndpoint", current.mns_endpoint),
            mns_queue_name=params.get("MnsQueueName", current.mns_queue_name),
        )
        if updated.callback_type not in {"HTTP", "MNS"}:
            raise invalid_parameter("CallbackType", "it must be HTTP or MNS")
        if updated.auth_switch not in {"on", "off"}:
            raise invalid_parameter("AuthSwitch", "it must be on or off")
        if "CallbackURL" in params and (why := callback_url_problem(params["CallbackURL"])):
            raise invalid_parameter("CallbackURL", f"it {why}")
        if "AuthKey" in params and (why := auth_key_problem(params["AuthKey"])):
            raise invalid_parameter("AuthKey", f"it {why}")
        if updated.callback_type == "HTTP" and not updated.callback_url:
            raise missing_parameter("CallbackURL")
        if updated.callback_type == "HTTP" and updated.auth_switch == "on" and not updated.auth_key:
            raise missing_parameter("AuthKey")
        if updated.callback_type == "MNS" and not updated.mns_endpoint:
            raise missing_parameter("MnsEndpoint")
        if updated.callback_type == "MNS" and not updated.mns_queue_name:
            raise missing_parameter("MnsQueueName")
        self._delivery.message_callback = updated
        logger.info(
            "message_callback_set",
            callback_type=updated.callback_type,
            callback_url=updated.callback_url,
            event_type_list=updated.event_type_list,
            auth_switch=updated.auth_switch,
        )
        return {}

    def get_message_callback(self, params: Mapping[str, str]) -> dict[str, Any]:
        return {"MessageCallback": self._delivery.message_callback.as_response()}
