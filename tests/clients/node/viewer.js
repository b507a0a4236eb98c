// A viewer on the `ws` client with every option at its default (permessage-deflate
// offered): joins ROOM, sends an offer and an ICE candidate to the one peer already
// there, waits for its answer, and prints one JSON line with what it saw.
// Usage: node viewer.js URL ROOM   (exit 0 on success; wss:// trusts NODE_EXTRA_CA_CERTS)
"use strict";
const WebSocket = require("ws");

const [url, room] = process.argv.slice(2);
const ws = new WebSocket(url);
const seen = [];
const fail = (why) => { console.error(why); process.exit(1); };
setTimeout(() => fail(`timed out; seen: ${JSON.stringify(seen)}`), 10000).unref();

ws.on("open", () => ws.send(JSON.stringify({ type: "join", room_id: room })));
ws.on("error", (err) => fail(`error: ${err.message}`));
ws.on("message", (data, isBinary) => {
  if (isBinary) fail("binary message");
  const message = JSON.parse(data.toString());
  seen.push(message);
  if (message.type === "peers") {
    if (message.peers.length !== 1) fail(`expected one peer: ${JSON.stringify(message)}`);
    const host = message.peers[0].id;
    ws.send(JSON.stringify({ type: "offer", from: "", to: host, sdp: "v=0 node-offer" }));
    ws.send(JSON.stringify({ type: "ice", from: "", to: host, candidate: "candidate:1 1 udp 1 127.0.0.1 9 typ host",
                             sdp_mid: "0", sdp_mline_index: 0 }));
  } else if (message.type === "answer") {
    console.log(JSON.stringify({ extensions: ws.extensions, protocol: ws.protocol, seen }));
    ws.close(1000);
  } else if (message.type === "error") {
    fail(`error message: ${JSON.stringify(message)}`);
  }
});
ws.on("close", (code) => { if (code !== 1000 && code !== 1005) fail(`closed ${code}`); });
