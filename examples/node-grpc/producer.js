// Enqueue tasks over gRPC: node producer.js HOST:PORT QUEUE COUNT
// Prints {"task_ids": [...]} on stdout.
"use strict";

const { connect, unary } = require("./durable_tq");

async function main() {
  const [address = "127.0.0.1:7482", queue = "node", count = "3"] = process.argv.slice(2);
  const { client, metadata } = connect(address);
  const taskIds = [];
  for (let n = 0; n < Number(count); n++) {
    const payload = { a: n, b: n * 10, from: "node" };
    const reply = await unary(client, metadata, "Enqueue", {
      queue,
      payload_json: JSON.stringify(payload),
    });
    taskIds.push(Number(reply.task_id));
  }
  console.log(JSON.stringify({ task_ids: taskIds }));
  client.close();
}

main().catch((err) => {
  console.error(`producer failed: ${err.message}`);
  process.exit(1);
});
