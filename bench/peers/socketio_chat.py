#!/usr/bin/env python3
"""The Socket.IO peer of the chat: rooms over python-socketio on asyncio (aiohttp),
the stack a Python user picks for "real-time chat & notifications".

Events: `join` {room} puts the client in the room and answers `joined` {room};
`say` {room, text} sends `msg` {room, nick, text} to every member of the room, its
author included (the chat's own rule). Nothing else: no names, history or limits.

Run: python3 bench/peers/socketio_chat.py PORT   (needs python-socketio and aiohttp:
pip install -r bench/peers/requirements.txt)
"""
import sys

import socketio
from aiohttp import web

port = int(sys.argv[1]) if len(sys.argv) > 1 else 7000
sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False)
app = web.Application()
sio.attach(app)


@sio.event
async def join(sid, data):
    await sio.enter_room(sid, data["room"])
    await sio.emit("joined", {"room": data["room"]}, to=sid)


@sio.event
async def say(sid, data):
    await sio.emit("msg", {"room": data["room"], "nick": sid, "text": data["text"]}, room=data["room"])


web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, backlog=4096)
