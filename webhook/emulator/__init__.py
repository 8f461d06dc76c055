"""A local stand-in for ApsaraVideo VOD's dynamic-image API; the official SDK talks to it unchanged.

Point the SDK at it with
``Client(Config(access_key_id=..., access_key_secret=..., endpoint="127.0.0.1:PORT",
protocol="http", region_id="cn-shanghai"))`` (``Config`` from ``alibabacloud_tea_openapi.models``).

What it reproduces:

- POP's RPC protocol as the SDK speaks it: ``POST /`` with the action in ``x-acs-action``, the
  version in ``x-acs-version`` and the parameters in the query string (or a form body), signed
  with ``ACS3-HMAC-SHA256``. The signature is verified the way the SDK computes it, and the
  usual POP errors come back in Alibaba Cloud's JSON shape (``RequestId``, ``HostId``,
  ``Code``, ``Message``, ``Recommend``), so the SDK raises ``ClientException`` /
  ``ServerException`` with ``code``, ``status_code`` and ``request_id`` set.
- ``SubmitDynamicImageJob``, ``ListDynamicImage``, ``SetMessageCallback`` and
  ``GetMessageCallback``; every other action is ``InvalidAction.NotFound``.
- VOD's quotas, per AccessKeyId and per API as at VOD, in any one-second window
  (``Throttling.User``): ``qps`` for SubmitDynamicImageJob (30), ``list_qps`` for
  ListDynamicImage (100), ``callback_qps`` for Set/GetMessageCallback (15; VOD documents it for
  SetMessageCallback).
- VOD's callback: ``delay`` seconds after submission the job ends and a ``DynamicImageComplete``
  event is POSTed to the configured URL, signed with ``X-VOD-TIMESTAMP`` / ``X-VOD-SIGNATURE``
  when authentication is on. Only HTTP 200 within 5 s counts; otherwise it is retried at 1 s
  intervals, 3 attempts in all, then dropped for good. Redirects are not followed.
- MNS, on the same port: queues in memory behind MNS's REST API (version 2015-06-06, XML,
  ``MNS id:signature`` requests checked against the same AccessKeys), as the official
  ``aliyun-mns-sdk`` speaks it: Create/Get/Set/DeleteQueue, (Batch)SendMessage,
  (Batch)ReceiveMessage with long polling, (Batch)DeleteMessage and ChangeMessageVisibility,
  with MNS's receipt handles, visibility timeouts and error codes (see ``queues``). An MNS
  client's endpoint is the emulator's base URL, ``http://127.0.0.1:PORT``.
- VOD's MNS callback: when the MessageCallback is ``CallbackType=MNS``, each finished job's
  ``DynamicImageComplete`` JSON is written, as the raw message body, into the emulator's own
  queue named ``MnsQueueName`` (MnsEndpoint is recorded, never dialled). A missing queue is
  retried twice, 1 s apart, then the event is dropped.
- Fault injection: ``drop_rate`` (callback never sent), ``duplicate_rate`` (delivered twice),
  ``fail_rate`` (job fails), reproducible with ``seed``; for HTTP and MNS alike.

There are no videos here: every VideoId exists and is in a state that allows the job, except

- a VideoId starting with ``notfound-``: 404 ``InvalidVideo.NotFound``;
- a VideoId starting with ``illegal-``: 400 ``Forbidden.IllegalStatus``;
- a VideoId starting with ``internalerror-``: 500 ``InternalError`` (the SDK raises
  ``ServerException``).

``GET /_emulator/state`` (no authentication) shows every job: its status
(``running|success|fail``), its callback outcome (``pending``, ``delivered``,
``dropped_by_fault``, ``failed_after_retries``, or ``not_subscribed`` when no callback, HTTP or
MNS, for ``DynamicImageComplete`` was configured as it ended), the delivery attempts made and
the deliveries made (answered with 200, or written into the queue); the MessageCallback; and
every queue's messages (``visible``, ``invisible``, ``delayed``), totals (``sent``,
``received``, ``deleted``) and the long polls ``waiting`` on it.

By concern: ``auth`` (the request signature), ``quotas``, ``jobs`` (their lifecycle and faults),
``delivery`` (the callbacks), ``actions`` (the RPC endpoint), ``errors`` (POP's error shape),
``queues`` (MNS's queues and their REST API), ``mns_auth`` (MNS's request signature),
``mns_xml`` (MNS's XML and error shape) and ``app`` (options, composition, serving).
"""

from webhook.emulator.app import EmulatorOptions, create_emulator_app, serve_emulator

__all__ = ["EmulatorOptions", "create_emulator_app", "serve_emulator"]
