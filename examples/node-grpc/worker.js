// A durable_tq worker on the gRPC Work stream: node worker.js HOST:PORT QUEUE COUNT [CONCURRENCY]
//
// Grants CONCURRENCY credits, runs each pushed task (adds payload.a + payload.b), and acks in
// batches with the same number of fresh credits. Exits once COUNT tasks are acknowledged
// (every ack confirmed in a `settled` reply) and prints {"done": N, "failed": [...]}.
"use strict";

const os = require("node:os");
const { connect } = require("./durable_tq");

const FLUSH_MS = 5; // acks wait at most this long to share one commit

function run(task) {
  const payload = JSON.parse(task.payload_json);
  if (typeof payload.a !== "number" || typeof payload.b !== "number") {
    throw new Error("payload needs numbers a and b");
  }
  return { sum: payload.a + payload.b, by: "node", pid: process.pid };
}

async function main() {
  const [address = "127.0.0.1:7482", queue = "node", count = "10", concurrency = "8"] =
    process.argv.slice(2);
  const wanted = Number(count);
  const slots = Number(concurrency);
  const { client, metadata } = connect(address);
  const stream = client.Work(metadata);
  let done = 0;
  const failed = [];
  let pending = []; // settles not yet sent
  let timer = null;

  const flush = () => {
    timer = null;
    if (pending.length === 0) return;
    const settles = pending;
    pending = [];
    // Each settled task frees a slot: grant it back in the same message.
    stream.write({ settles, credit: settles.length });
  };

  const finished = new Promise((resolve, reject) => {
    stream.on("data", (message) => {
      for (const task of message.tasks || []) {
        try {
          const result = run(task);
          pending.push({
            task_id: task.task_id,
            lease_token: task.lease_token,
            outcome: "ack",
            result_json: JSON.stringify(result),
          });
        } catch (err) {
          pending.push({
            task_id: task.task_id,
            lease_token: task.lease_token,
            outcome: "fail",
            error: String(err.message),
            retry: false, // a bad payload stays bad: dead at once, no retries
          });
        }
      }
      if (pending.length && timer === null) timer = setTimeout(flush, FLUSH_MS);
      if (message.settled) {
        for (const result of message.settled.results) {
          if (result.ok) done += 1;
          else failed.push({ task_id: result.task_id, code: result.error && result.error.code });
        }
        if (done + failed.length >= wanted) {
          stream.end();
          resolve();
        }
      }
      if (message.worker_state === "terminate") {
        stream.end();
        resolve();
      }
    });
    stream.on("error", (err) => {
      if (err.code === 1 /* CANCELLED after end */) resolve();
      else reject(err);
    });
    stream.on("end", resolve);
  });

  stream.write({
    open: {
      worker: {
        id: `node-${os.hostname()}-${process.pid}`,
        queues: [queue],
        concurrency: slots,
        meta_json: JSON.stringify({ runtime: `node ${process.version}` }),
      },
      client: "durable_tq-node-example/0.1",
    },
    credit: slots,
  });
  await finished;
  console.log(JSON.stringify({ done, failed }));
  client.close();
}

main().catch((err) => {
  console.error(`worker failed: ${err.message}`);
  process.exit(1);
});
