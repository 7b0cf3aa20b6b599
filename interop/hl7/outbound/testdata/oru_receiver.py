#!/usr/bin/python3
"""An independent HL7 v2 receiver for Vigil's outbound tests.

It uses Debian's python3-hl7 (hl7.mllp.start_hl7_server for MLLP, hl7.parse for the
messages, Message.create_ack for the acknowledgements), none of Vigil's code. It listens on
127.0.0.1 (port given, 0 for any), prints "PORT <n>" once listening, writes one JSON line per
message received to --out (control id, message type, patient MRN, each OBX's code, value,
unit and coding systems), and answers according to --plan:

  --plan C2=AR:2,C5=AE   answer AR to the first 2 deliveries of control id C2 (then AA),
                         AE to every delivery of C5; AA to anything else.

It stops when its standard input closes.
"""
import argparse
import asyncio
import json
import sys

import hl7
import hl7.mllp


def part(seg, *index):
    """The component at index (1-based field, repetition, component), or "" when the field
    is empty (python3-hl7 gives a plain string for an empty field)."""
    v = seg
    for i in index:
        if not callable(v):
            return ""
        try:
            v = v(i)
        except (IndexError, KeyError):
            return ""
    return str(v)


def parse_plan(text):
    plan = {}
    for item in filter(None, (text or "").split(",")):
        ctl, _, rule = item.partition("=")
        code, _, times = rule.partition(":")
        plan[ctl] = [code, int(times) if times else None]
    return plan


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--plan", default="")
    args = ap.parse_args()
    plan = parse_plan(args.plan)
    out = open(args.out, "a", buffering=1)

    async def on_client(reader, writer):
        try:
            while not writer.is_closing():
                msg = await reader.readmessage()
                msh = msg.segment("MSH")
                ctl = str(msh(10))
                pid = msg.segment("PID")
                obx = []
                for seg in msg.segments("OBX"):
                    obx.append({"type": str(seg(2)), "code": part(seg, 3, 1, 1), "system": part(seg, 3, 1, 3),
                                "value": str(seg(5)), "unit": part(seg, 6, 1, 1), "unit_system": part(seg, 6, 1, 3)})
                code = "AA"
                if ctl in plan:
                    rule = plan[ctl]
                    if rule[1] is None:
                        code = rule[0]
                    elif rule[1] > 0:
                        code = rule[0]
                        rule[1] -= 1
                out.write(json.dumps({"control_id": ctl, "type": str(msh(9)), "version": str(msh(12)),
                                      "mrn": str(pid(3)(1)(1)), "obx": obx, "answered": code}) + "\n")
                writer.writemessage(msg.create_ack(ack_code=code))
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    server = await hl7.mllp.start_hl7_server(on_client, "127.0.0.1", args.port, encoding="utf-8")
    print("PORT", server.sockets[0].getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
