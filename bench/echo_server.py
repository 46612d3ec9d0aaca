"""The ceiling of the stack: a bare FastAPI WebSocket server that answers like a run.

For each ``message`` frame it sends an ``ack`` and then ``--frames`` event-shaped
frames, the last one ``agent_completed`` — no auth, no database, no agent.

    python bench/echo_server.py --port 8001 --frames 14
"""

from __future__ import annotations

import argparse

import orjson
import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect


def build_app(frames: int) -> FastAPI:
    app = FastAPI()
    template = {
        "type": "message_delta",
        "run_id": "run_echo00000000000000000",
        "thread_id": "thr_echo00000000000000000",
        "seq": 0,
        "ts": "2026-11-22T00:00:00.000Z",
        "agent": "assistant",
        "parent_agent": None,
        "data": {"message_id": "msg_echo000000000000000", "delta": "some words here "},
    }

    @app.websocket("/api/v1/ws")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.receive_text()  # the auth frame
        await websocket.send_text(
            '{"type":"connection_established","user_id":"usr_echo","connection_id":"con_echo"}'
        )
        try:
            while True:
                frame = orjson.loads(await websocket.receive_text())
                await websocket.send_text(
                    orjson.dumps(
                        {
                            "type": "ack",
                            "client_id": frame.get("client_id"),
                            "run_id": "run_echo00000000000000000",
                        }
                    ).decode()
                )
                for seq in range(1, frames + 1):
                    event = dict(template, seq=seq)
                    if seq == frames:
                        event["type"] = "agent_completed"
                    await websocket.send_text(orjson.dumps(event).decode())
        except WebSocketDisconnect:
            return

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--frames", type=int, default=14)
    args = parser.parse_args()
    uvicorn.run(
        build_app(args.frames),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
    )


if __name__ == "__main__":
    main()
