// The Node `ws` baseline of bench.fanout: `node server.mjs PORT`.
//
// What `broadcast` (bench/servers.py) does, in Node: events shaped like rtgw's `orders` frame
// (bench.servers.make_event), generated at the rate set over stdin and stamped with the time
// each was due (bench/pacer.py), each encoded once and written to every open client with
// ws's own `send`. The control protocol is the Python baselines' one (bench/procs.py): `rate R`
// and `stats` on stdin, one JSON answer a line on stdout, and {"ready":true} once listening.

import { createInterface } from "node:readline";
import { WebSocket, WebSocketServer } from "ws";

const MAX_BATCH_S = 0.05; // when behind, catch up at most this much schedule per batch

const port = Number(process.argv[2]);
const clients = new Set();
const pacer = { rate: 0, sent: 0, t0: Date.now() / 1000, due: 0, offset: 0 };

function answer(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}

// Python's datetime.isoformat() of a UTC time: microseconds and "+00:00".
function isoStamp(seconds) {
  const total = Math.round(seconds * 1e6);
  const micros = total % 1e6;
  const base = new Date((total - micros) / 1000).toISOString().slice(0, 19);
  return `${base}.${String(micros).padStart(6, "0")}+00:00`;
}

function makeEvent(offset, due) {
  const stamp = isoStamp(due);
  return {
    type: "event",
    topic: "orders",
    offset,
    epoch: "5f0e9a1c",
    change: {
      id: `${offset.toString(16).toUpperCase().padStart(16, "0")}:000000`,
      schema: "public",
      table: "orders",
      op: "INSERT",
      commit_time: stamp,
      new: {
        id: offset,
        customer_id: 1,
        status: `ts=${due.toFixed(6)}`,
        total: "10.00",
        created_at: stamp,
        updated_at: stamp,
      },
    },
  };
}

function fire(times) {
  for (const due of times) {
    pacer.offset += 1;
    const data = Buffer.from(JSON.stringify(makeEvent(pacer.offset, due)));
    for (const client of clients) {
      if (client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: false });
      }
    }
  }
}

function tick() {
  const rate = pacer.rate;
  if (rate <= 0) {
    setTimeout(tick, 10);
    return;
  }
  const now = Date.now() / 1000;
  let due = Math.floor((now - pacer.t0) * rate) - pacer.due;
  if (due > 0) {
    due = Math.min(due, Math.max(1, Math.floor(rate * MAX_BATCH_S)));
    const first = pacer.due;
    const times = Array.from({ length: due }, (_, i) => pacer.t0 + (first + i + 1) / rate);
    pacer.due += due;
    pacer.sent += due;
    fire(times);
  }
  const nextAt = pacer.t0 + (pacer.due + 1) / rate;
  const waitS = Math.min(0.01, Math.max(0, nextAt - Date.now() / 1000));
  setTimeout(tick, waitS * 1000);
}

function command(line) {
  const words = line.trim().split(/\s+/);
  if (words[0] === "rate" && words.length === 2) {
    pacer.rate = Number(words[1]);
    pacer.t0 = Date.now() / 1000;
    pacer.due = 0;
    answer({ ok: true, rate: pacer.rate });
  } else if (words[0] === "stats" && words.length === 1) {
    answer({ clients: clients.size, sent: pacer.sent });
  } else if (words[0] !== "") {
    answer({ error: `unknown command ${JSON.stringify(words)}` });
  }
}

const server = new WebSocketServer({
  host: "127.0.0.1",
  port,
  path: "/ws",
  perMessageDeflate: false,
  maxPayload: 64 * 1024,
  clientTracking: false,
});

server.on("connection", (ws) => {
  ws.send(JSON.stringify({ type: "ready" }));
  clients.add(ws);
  ws.on("close", () => clients.delete(ws));
  ws.on("error", () => clients.delete(ws));
});

server.on("listening", () => {
  answer({ ready: true });
  createInterface({ input: process.stdin })
    .on("line", command)
    .on("close", () => process.exit(0));
  tick();
});
