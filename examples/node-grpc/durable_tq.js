// Loads durable_tq's shipped proto at run time and opens a client for it.
"use strict";

const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

// The proto ships inside the Python package; DURABLE_TQ_PROTO may point elsewhere.
const PROTO =
  process.env.DURABLE_TQ_PROTO ||
  path.join(__dirname, "..", "..", "durable_tq", "servers", "grpc", "durable_tq.proto");

function connect(address) {
  const definition = protoLoader.loadSync(PROTO, {
    keepCase: true, // field names as in the proto: payload_json, lease_token
    longs: Number, // task ids fit in a double for any realistic queue
    defaults: false,
    oneofs: true,
  });
  const v1 = grpc.loadPackageDefinition(definition).durable_tq.v1;
  const metadata = new grpc.Metadata();
  if (process.env.DURABLE_TQ_TOKEN) {
    metadata.set("authorization", `Bearer ${process.env.DURABLE_TQ_TOKEN}`);
  }
  const client = new v1.DurableTQ(address, grpc.credentials.createInsecure());
  return { client, metadata };
}

// Promise wrapper for a unary call; rejects with the wire error code as err.wireCode.
function unary(client, metadata, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, (err, reply) => {
      if (err) {
        const code = err.metadata && err.metadata.get("durable-tq-error-code")[0];
        err.wireCode = code ? String(code) : undefined;
        reject(err);
      } else {
        resolve(reply);
      }
    });
  });
}

module.exports = { connect, unary, grpc };
