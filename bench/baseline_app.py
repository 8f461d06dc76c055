"""The same HTTP stack with nothing behind it: reads the body and answers 200 JSON."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def accept(request: Request) -> Response:
    await request.body()
    return JSONResponse({"status": "accepted"})


app = Starlette(routes=[Route("/callbacks/vod", accept, methods=["POST"])])
